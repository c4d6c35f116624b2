# The two entry points the README starts with. Both set up .venv first (scripts/setup.sh).
SHELL := /bin/bash
RUN := source scripts/env.sh && source .venv/bin/activate &&

.PHONY: setup demo demo-real test lint
setup:
	@bash scripts/setup.sh

# A second `make demo` continues (or just reports) the run instead of refusing the used folder.
demo: setup
	@$(RUN) if [ -e runs/demo/store.sqlite ]; then evomerge resume runs/demo; \
	else evomerge search experiments/toy_ps_cmaes.yaml --run-dir runs/demo; fi

# The second demo, on a real model (docs/real_experts.md): builds the smollm2-experts zoo if it is
# missing (a skill LoRA and a Zel vocabulary-remap expert trained from SmolLM2-135M-Instruct on
# CPU, once), runs the parameter-space search whose winner the hybrid starts from, then the
# hybrid (PS+DFS) search. A second run reuses the zoo and the PS run and continues the hybrid.
demo-real: setup
	@$(RUN) evomerge zoo build smollm2-experts && \
	if [ ! -e runs/real_ps/store.sqlite ]; then \
	  evomerge search experiments/real_ps.yaml --run-dir runs/real_ps; fi && \
	evomerge export runs/real_ps --out runs/real_ps/best.yaml && \
	if [ -e runs/real_hybrid/store.sqlite ]; then evomerge resume runs/real_hybrid; \
	else evomerge search experiments/real_hybrid.yaml --run-dir runs/real_hybrid; fi

# The suite in TEST_WORKERS pytest-xdist processes, a test file per process at a time (its
# module fixtures are built once); each gets cores / TEST_WORKERS torch threads (tests/conftest.py).
# 2 suits the 2-core CI; the largest process peaked at 6.2-7.6 GB there, so raise it with the cores
# and the memory you have.
TEST_WORKERS ?= 2
test: setup
	@$(RUN) python -m pytest -q -p no:cacheprovider --durations=20 \
	  -n $(TEST_WORKERS) --dist loadfile tests

lint: setup
	@$(RUN) ruff check evomerge tests benchmarks && ruff format --check evomerge tests benchmarks
