# The two entry points the README starts with. Both set up .venv first (scripts/setup.sh).
SHELL := /bin/bash
RUN := source scripts/env.sh && source .venv/bin/activate &&

.PHONY: setup demo test lint
setup:
	@bash scripts/setup.sh

demo: setup
	@$(RUN) evomerge search experiments/toy_ps_cmaes.yaml --run-dir runs/demo

test: setup
	@$(RUN) python -m pytest -q -p no:cacheprovider tests

lint: setup
	@$(RUN) ruff check evomerge tests benchmarks && ruff format --check evomerge tests benchmarks
