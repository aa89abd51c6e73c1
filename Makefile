# ec2jobs — the two fresh-machine commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR):$(CURDIR)/lambdas
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1

.PHONY: install test lint typecheck unit integration catalog demo clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check lambdas local scripts tests
	$(VENV)/bin/ruff format --check lambdas local scripts tests

typecheck: install
	$(VENV)/bin/mypy

catalog: install
	$(PY) scripts/refresh_catalog.py

test: install lint typecheck
	$(PY) scripts/refresh_catalog.py --check
	$(PY) -m pytest -q

unit: install
	$(PY) -m pytest -q tests/unit

integration: install
	$(PY) -m pytest -q tests/integration

demo:
	@echo "make demo (a real job end to end on the embedded control plane) is built by issue 5 and is not available yet." >&2
	@echo "What exists today is exercised by 'make test' (see README, Status)." >&2
	@exit 2

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis cdk.out
