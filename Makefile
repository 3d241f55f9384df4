# splitproxy — the commands a user and CI run. Everything installs into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The compiled build (setup.py: the hot-path modules through mypyc), installed as a user
# would install it; rebuilt whenever a source file changes, so it is never stale.
CVENV := .venv-compiled
CBIN := $(CVENV)/bin
CSTAMP := $(CVENV)/.installed

.PHONY: demo test check lint format typecheck bench compiled clean

# native/: the C JSON walk (proxy._jsondiff), built into both venvs by setup.py.
NATIVE := $(wildcard native/*.c native/yyjson/*.c native/yyjson/*.h)

$(STAMP): pyproject.toml setup.py $(NATIVE)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

## compiled: .venv-compiled with the mypyc-compiled data plane (what bench and Docker run)
compiled: $(CSTAMP)

$(CSTAMP): pyproject.toml setup.py $(NATIVE) $(wildcard proxy/*.py proxy/*.pyi proxy/templates/* proxy/static/*)
	test -x $(CBIN)/python || $(PYTHON) -m venv $(CVENV)
	$(CBIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	# The dependencies first (a plain build): mypyc type-checks against them.
	$(CBIN)/python -m pip install --quiet '.[dev,bench]'
	rm -rf build
	SPLITPROXY_COMPILE=1 $(CBIN)/python -m pip install --quiet --no-build-isolation --no-deps --force-reinstall .
	$(CBIN)/splitproxy --version | grep -q 'data plane: compiled'
	touch $(CSTAMP)

## demo: two built-in demo versions behind the proxy (Ctrl-C to stop); DEMO_ARGS for more
## of `splitproxy demo`'s flags: make demo DEMO_ARGS="--listen 127.0.0.1:18080 --admin-listen 127.0.0.1:19901"
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/splitproxy demo --traffic $(DEMO_ARGS)

## test: the whole test suite (pure, in-process, black-box), on the source tree and then
## on the compiled build
# Debian packages first: gcc builds the C JSON walk into .venv too.
test:
	bash scripts/install-test-deps.sh
	$(MAKE) --no-print-directory $(STAMP) compiled
	$(BIN)/python -m pytest -q
	SPLITPROXY_TEST_INSTALLED=1 $(CBIN)/python -m pytest -q -p no:cacheprovider

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

## bench: direct vs nginx vs splitproxy (compiled build) on loopback (installs nginx and wrk)
bench: $(CSTAMP)
	bash scripts/install-bench-deps.sh
	$(CBIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(CVENV) build .pytest_cache .mypy_cache .ruff_cache
