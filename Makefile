# LeadStage developer commands. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
TOOLS := .tools
UV := $(TOOLS)/bin/uv
BIN := $(VENV)/bin
INGEST_PORT ?= 8081
API_PORT ?= 8080
export UV_PYTHON_DOWNLOADS := never

.PHONY: help
help: ## List the commands
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.installed: $(UV) requirements-dev.lock pyproject.toml
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(VENV)
	$(UV) pip sync --quiet --python $(BIN)/python requirements-dev.lock
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --editable .
	touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv from the lock files (needs only Python 3.11+)

.PHONY: lock
lock: $(UV) ## Re-resolve requirements.lock and requirements-dev.lock from pyproject.toml
	$(UV) pip compile pyproject.toml --python-version 3.11 --generate-hashes --no-header --quiet -o requirements.lock
	$(UV) pip compile pyproject.toml --extra embedded --group dev --python-version 3.11 --generate-hashes --no-header --quiet -o requirements-dev.lock

.PHONY: run
run: install ## Run everything embedded: PostgreSQL from a wheel, event log in PostgreSQL
	$(BIN)/leadstage run --ingest-port $(INGEST_PORT) --api-port $(API_PORT)

.PHONY: run-kafka
run-kafka: services-up ## Run everything against the local Kafka broker
	$(BIN)/leadstage run --transport kafka --ingest-port $(INGEST_PORT) --api-port $(API_PORT)

.PHONY: services-up
services-up: install ## Start the local PostgreSQL and Kafka (idempotent)
	deploy/local/services.sh up

.PHONY: services-down
services-down: ## Stop the local PostgreSQL and Kafka started from this checkout
	@if [ -x $(BIN)/leadstage ]; then deploy/local/services.sh down; fi

.PHONY: services-status
services-status: install ## Are the local services up?
	deploy/local/services.sh status

.PHONY: lint
lint: install ## ruff (lint and format check) and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

.PHONY: browser
browser: ## Install Debian's Chromium for the dashboard's browser test (idempotent)
	deploy/local/browser.sh

.PHONY: assets
assets: ## Re-vendor the dashboard's browser libraries from the npm registry
	cd services/metrics-api/web && npm ci --no-audit --no-fund
	cp services/metrics-api/web/node_modules/chart.js/dist/chart.umd.min.js \
	   services/metrics-api/leadstage_api/dashboard/static/vendor/
	cp services/metrics-api/web/node_modules/chart.js/LICENSE.md \
	   services/metrics-api/leadstage_api/dashboard/static/vendor/chart.js.LICENSE.md

.PHONY: test
test: lint services-up browser ## Lint, start the real services, run unit, integration and e2e tests
	$(BIN)/pytest tests/unit tests/integration tests/e2e

.PHONY: bench
bench: services-up ## Run the benchmarks under bench/
	@for b in bench/*.py; do $(BIN)/python $$b; done

.PHONY: clean
clean: services-down ## Stop services and remove environments and local data
	rm -rf $(VENV) $(TOOLS) .local .pytest_cache .mypy_cache .ruff_cache
