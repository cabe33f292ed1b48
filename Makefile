# Agent Runtime — developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

export UV_PYTHON_DOWNLOADS := never
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
PY := $(VENV)/bin/python
SRC := libs/kit/src libs/testkit/src services/agent_registry/src services/tools/src services/executor/src services/gateway/src
PYTEST_ARGS ?=

.PHONY: help install protos lint test test-fast run demo bench soak clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check 'uv>=0.8'

$(VENV)/.synced: pyproject.toml uv.lock libs/*/pyproject.toml services/*/pyproject.toml | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

install: $(VENV)/.synced ## Create .venv with every workspace package (uv, locked)

protos: $(VENV)/.synced ## Regenerate libs/protos from protos/*.proto
	$(PY) scripts/gen_protos.py

lint: $(VENV)/.synced ## ruff format+lint, mypy, import-linter layers, protobuf drift
	$(PY) scripts/gen_protos.py --check
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy $(SRC)
	$(VENV)/bin/lint-imports

test: lint ## Lint, then the whole suite (unit, integration, e2e) with coverage
	$(VENV)/bin/coverage erase
	$(VENV)/bin/coverage run -m pytest $(PYTEST_ARGS)
	$(VENV)/bin/coverage combine -q || true
	$(VENV)/bin/coverage report

test-fast: $(VENV)/.synced ## The suite without lint and coverage
	$(PY) -m pytest -q -x $(PYTEST_ARGS)

QUEUE ?=
BUS ?=
run: $(VENV)/.synced ## Start NATS and the services on embedded defaults (QUEUE=redis|rabbitmq, BUS=redis; Ctrl-C stops)
	QUEUE=$(QUEUE) BUS=$(BUS) $(PY) scripts/dev.py

demo: $(VENV)/.synced ## Create an agent and chat with it (curl, openai package) via the gateway
	$(PY) scripts/demo.py

bench: $(VENV)/.synced ## Benchmarks; results go to docs/BENCHMARKS.md
	$(PY) bench/registry_bench.py --write docs/BENCHMARKS.md
	$(PY) bench/tools_bench.py --write docs/BENCHMARKS.md
	$(PY) bench/sandbox_bench.py --write docs/BENCHMARKS.md
	$(PY) bench/executor_bench.py --write docs/BENCHMARKS.md
	$(PY) bench/gateway_bench.py --write docs/BENCHMARKS.md
	$(PY) bench/durable_bench.py --write docs/BENCHMARKS.md
	$(PY) bench/queue_bench.py --write docs/BENCHMARKS.md
	$(PY) bench/sessions_bench.py --write docs/BENCHMARKS.md

SOAK_MINUTES ?= 10
soak: $(VENV)/.synced ## The stack under mixed load for SOAK_MINUTES (10): flat RSS, no error logs, bounded storage
	$(PY) scripts/soak.py --minutes $(SOAK_MINUTES)

clean: ## Remove the virtualenv, caches and ./var
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache .coverage* var
