# The two entry points the README starts with. Both set up .venv first (scripts/setup.sh).
SHELL := /bin/bash
RUN := source scripts/env.sh && source .venv/bin/activate &&

.PHONY: setup demo test lint
setup:
	@bash scripts/setup.sh

# A second `make demo` continues (or just reports) the run instead of refusing the used folder.
demo: setup
	@$(RUN) if [ -e runs/demo/store.sqlite ]; then evomerge resume runs/demo; \
	else evomerge search experiments/toy_ps_cmaes.yaml --run-dir runs/demo; fi

test: setup
	@$(RUN) python -m pytest -q -p no:cacheprovider tests

lint: setup
	@$(RUN) ruff check evomerge tests benchmarks && ruff format --check evomerge tests benchmarks
