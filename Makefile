# Every target creates .venv if missing and installs the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `npm ci` writes this file; it is older than the lockfile when node_modules is stale.
NODE_STAMP := node_modules/.package-lock.json

.PHONY: test lint typecheck unit clients demo demo-postgres bench lock clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NODE_STAMP): package-lock.json
	npm ci --no-audit --no-fund

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint $(NODE_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	npm test

# The real Ably clients (ably-js, the Models SDK, Chromium) against the emulators and the connector.
clients: $(STAMP) $(NODE_STAMP)
	npm test

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

demo: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m demo

demo-postgres: $(STAMP)
	$(BIN)/python -m demo.postgres

# BENCH_ARGS=--dated also writes benchmarks/results/<date>-<commit>-<what>.json, to commit.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# The Docker image's hash-pinned locks, from pyproject.toml (the runtime dependencies with the motor extra,
# and the build backend); pip-tools is installed here only, not in the dev extra. Pins are kept unless
# they no longer satisfy pyproject.toml: `make lock LOCK_ARGS=--upgrade` moves every one to the newest.
LOCK := CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-options
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet 'pip-tools>=7.4,<8'
	$(LOCK) $(LOCK_ARGS) --extra motor --output-file requirements/docker.txt pyproject.toml
	$(LOCK) $(LOCK_ARGS) --only-build-deps --build-deps-for wheel --output-file requirements/docker-build.txt pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache node_modules demo/web/build
