# The two commands of the README. Each sets up what is missing first.
#   make run   - the whole product on one machine, against local stand-ins, then a summary
#   make test  - lint, type check and the whole test suite (CI runs exactly this)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# checkov lives in its own virtualenv: about 300 MB, with dependency pins of its own.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

.PHONY: setup run test lint typecheck unit integration e2e infra-check clean chromium

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

# Debian's chromium: the workbook page test renders the page in it headless. Installed when missing,
# for the tests only (CI runs as root; elsewhere through sudo).
chromium:
	@command -v chromium >/dev/null || { echo "setup: Debian chromium (headless, for the workbook page test)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends chromium fonts-dejavu-core >/dev/null; }

$(CHECKOV_STAMP): requirements-checkov.txt
	@echo "setup: checkov virtualenv in $(CHECKOV_VENV)"
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	@$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
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

e2e: setup chromium
	@$(PY) -m pytest tests/e2e

# The Bicep's generated table declarations are current, and checkov passes over infra/.
infra-check: setup $(CHECKOV_STAMP)
	@$(PY) -m local.infra_gen --check
	@$(PY) -m local.infra_check $(CHECKOV_VENV)/bin/checkov

test: setup chromium lint typecheck infra-check
	@$(PY) -m pytest

clean:
	rm -rf .local-state .pytest_cache .mypy_cache .ruff_cache
