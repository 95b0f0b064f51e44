# The two commands of the README. Each sets up what is missing first.
#   make run   - the whole product on one machine, against local stand-ins, then a summary
#   make test  - lint, type check and the whole test suite (CI runs exactly this)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: setup run test lint typecheck unit integration e2e clean

setup: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): requirements.txt requirements-dev.txt
	@echo "setup: Python virtualenv in $(VENV)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	@echo "setup: npm packages (Azurite)"
	@npm ci --no-audit --no-fund --loglevel=error
	@touch $@

run: setup
	@$(PY) -m local run

lint: setup
	@$(PY) -m ruff check .

typecheck: setup
	@$(PY) -m mypy shared functions local function_app.py

unit: setup
	@$(PY) -m pytest tests/unit

integration: setup
	@$(PY) -m pytest tests/integration

e2e: setup
	@$(PY) -m pytest tests/e2e

test: setup lint typecheck
	@$(PY) -m pytest

clean:
	rm -rf .local-state .pytest_cache .mypy_cache .ruff_cache
