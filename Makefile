# Every target creates .venv if missing and installs the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `npm ci` writes this file; it is older than the lockfile when node_modules is stale.
NODE_STAMP := node_modules/.package-lock.json

.PHONY: test lint typecheck unit clients demo demo-postgres bench clean

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

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache node_modules demo/web/build
