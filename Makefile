# One task runner for people and CI. `make setup` is idempotent and cheap when nothing changed.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help setup host services demo test lint format typecheck bench clean

help:
	@echo "make setup      install host packages, create .venv, start dockerd (idempotent)"
	@echo "make demo       write the example enclave under .demo/, validate it, bring it up on"
	@echo "                Docker (images built offline, embedded Vault), send a permitted, a"
	@echo "                prohibited and an approved request through its gateway, verify"
	@echo "                its audit log, then kill it and resume it with two approvals,"
	@echo "                run a kill drill and print its compliance summary (failures of"
	@echo "                this machine's own settings waived, signed and shown as such);"
	@echo "                it keeps running"
	@echo "make test       run every test tier (unit, integration, e2e) against real services"
	@echo "make lint       ruff lint + format check + import-linter contracts"
	@echo "make typecheck  mypy --strict over src, tests and bench"
	@echo "make bench      run the benchmarks under bench/"

setup: host $(STAMP) services

host:
	@scripts/setup-host.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	@$(PY) -c 'import enclave' && touch $@

services:
	@scripts/ensure-docker.sh

DEMO_STATE := .state/demo

demo: setup
	$(VENV)/bin/enclave init .demo --force
	$(VENV)/bin/enclave validate .demo/enclave.yaml
	$(VENV)/bin/enclave --state-dir $(DEMO_STATE) up .demo/enclave.yaml
	$(PY) scripts/demo_requests.py --spec .demo/enclave.yaml --state-dir $(DEMO_STATE) --running
	$(VENV)/bin/enclave --state-dir $(DEMO_STATE) status demo
	@echo "the demo enclave keeps running; stop it with:" \
	     "$(VENV)/bin/enclave --state-dir $(DEMO_STATE) down demo"
	$(PY) scripts/demo_requests.py --spec .demo/enclave.yaml --state-dir $(DEMO_STATE) --compliance

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format src tests bench scripts
	$(VENV)/bin/ruff check --fix src tests bench scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: setup
	PYTHONPATH=tests $(PY) -m bench

clean:
	rm -rf .demo build dist .mypy_cache .ruff_cache .pytest_cache
