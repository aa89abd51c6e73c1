# ec2jobs — the two fresh-machine commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR):$(CURDIR)/lambdas
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1

.PHONY: install sshd test lint typecheck unit integration catalog bench demo clean

# uv installs the pinned requirements in seconds where pip takes over a minute; pip if uv is unavailable.
UV := $(VENV)/bin/uv
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==0.13.9 || true  # pinned, like the rest
	if test -x $(UV); then $(UV) pip install --quiet --python $(PY) -r requirements-dev.txt; \
	  else $(PY) -m pip install --quiet -r requirements-dev.txt; fi
	$(PY) -m pip install --quiet --no-deps -e .   # the `ec2jobs` command (.venv/bin/ec2jobs)
	@touch $(STAMP)

install: $(STAMP)

# The log relay is tested against a real OpenSSH sshd on loopback; install it when missing (root: apt-get).
sshd:
	@if ! test -x /usr/sbin/sshd; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing openssh-server (for the relay tests)"; \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null 2>&1 || \
	     (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null)); \
	  else echo "OpenSSH sshd is missing: sudo apt-get install openssh-server" >&2; exit 1; fi; \
	fi

lint: install
	$(VENV)/bin/ruff check lambdas local scripts tests bench ec2jobs stacks app.py
	$(VENV)/bin/ruff format --check lambdas local scripts tests bench ec2jobs stacks app.py

typecheck: install
	$(VENV)/bin/mypy

# Benchmarks (bench/): launch overhead, log relay, cold start, cost, scale, in one run (this machine is shared and
# noisy: compare ratios within a run); prints a table and writes bench/results/latest.json. Not part of make test.
bench: install sshd
	$(PY) -m bench

catalog: install
	$(PY) scripts/refresh_catalog.py

# The unit, integration and template tests in two processes (each integration module has its own emulator); then the
# end-to-end tests, two modules at a time (each starts its own local runtime; their simulators take disjoint loopback
# blocks, local/simulator.py), except the relay fleet's, which asserts latency and runs alone after them.
E2E_ALONE := tests/e2e/test_relay_fleet.py
test: install sshd lint typecheck
	$(PY) scripts/refresh_catalog.py --check
	EC2JOBS_REQUIRE_SSHD=1 $(PY) -m pytest -q -n 2 tests/unit tests/integration tests/infra
	EC2JOBS_REQUIRE_SSHD=1 $(PY) -m pytest -q -n 2 --dist loadfile tests/e2e --ignore=$(E2E_ALONE)
	EC2JOBS_REQUIRE_SSHD=1 $(PY) -m pytest -q $(E2E_ALONE)

unit: install
	$(PY) -m pytest -q tests/unit

integration: install sshd
	EC2JOBS_REQUIRE_SSHD=1 $(PY) -m pytest -q tests/integration

# A real job end to end on the embedded control plane (README, "make demo").
demo: install sshd
	$(PY) -m local.demo

# The Lambdas' dependency layer, built locally without Docker: manylinux x86_64 wheels for CPython 3.12 into
# build/layer/python (scripts/build_layer.py; a stamp skips the rebuild while requirements.txt is unchanged).
layer: install
	@$(PY) scripts/build_layer.py

# The deployable template in cdk.out/, with no CDK CLI, no AWS credentials and no Docker: the layer, the CDK app
# (cdk-nag's AwsSolutions pack and CDK's template validation run inside it and fail it on any error), then cfn-lint
# (0 errors required; W3005 is CDK's DependsOn on a function's role next to its GetAtt, harmless).
synth: layer
	@rm -rf cdk.out
	@$(PY) app.py
	@$(VENV)/bin/cfn-lint --non-zero-exit-code error --ignore-checks W3005 -- cdk.out/*.template.json
	@echo "cfn-lint: 0 errors"

.PHONY: layer synth

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis cdk.out build
