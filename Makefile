# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch is enough for everything here; override TORCH to pick another build.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint install clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/pqprune demo

test: $(STAMP)
	$(BIN)/python -m pytest

# The inner loop: everything but the tests marked slow or end_to_end (those run in `make test`).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not end_to_end" -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/bench_measures.py
	$(BIN)/python bench/bench_prune.py
	$(BIN)/python bench/bench_runner.py
	$(BIN)/python bench/bench_export.py

# Removes the environment and build leftovers, never results (runs/ holds the results database and checkpoints).
clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
	find src tests bench -name __pycache__ -type d -prune -exec rm -rf {} +
