# splitproxy — the commands a user and CI run. Everything installs into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check lint format typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

## demo: two built-in demo versions behind the proxy (Ctrl-C to stop)
demo: $(STAMP)
	$(BIN)/splitproxy demo --traffic

## test: the whole test suite (pure, in-process, black-box)
test: $(STAMP)
	bash scripts/install-test-deps.sh
	$(BIN)/python -m pytest -q

## check: format check, lint, types, tests — what CI should be green on
check: $(STAMP) lint typecheck test

lint: $(STAMP)
	$(BIN)/ruff format --check proxy tests bench
	$(BIN)/ruff check proxy tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format proxy tests bench
	$(BIN)/ruff check --fix proxy tests bench

## bench: direct vs nginx vs splitproxy on loopback (installs nginx and wrk)
bench: $(STAMP)
	bash scripts/install-bench-deps.sh
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
