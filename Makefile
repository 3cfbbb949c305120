# Every target does its own set-up: on a fresh machine `make demo` and `make test` just work.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
KAFKA_POM := deploy/local-kafka/pom.xml

.DEFAULT_GOAL := help
.PHONY: help install kafka-jars postgres-server lint typecheck unit integration chaos test demo run sandbox status bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(INSTALLED) ## create .venv and install the service with its dev tools

kafka-jars: $(INSTALLED) ## resolve the Apache Kafka broker jars from Maven Central (cached)
	$(BIN)/python -c 'from consumer.devenv.kafka import ensure_kafka_jars; print(ensure_kafka_jars())'

postgres-server: ## make sure PostgreSQL server binaries exist (apt-get on Debian if missing)
	@if [ -z "$$ORDER_CONSUMER_POSTGRES_URL" ]; then deploy/postgres/ensure-server.sh; fi

lint: $(INSTALLED) ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(INSTALLED) ## mypy --strict on the package
	$(BIN)/mypy

unit: $(INSTALLED) ## fast tests, no network
	$(BIN)/pytest tests/unit

integration: $(INSTALLED) kafka-jars postgres-server ## real broker, sandbox and PostgreSQL
	$(BIN)/pytest tests/integration

chaos: $(INSTALLED) kafka-jars postgres-server ## the fault-injection scenarios, 5x the orders, and the model's long tier
	CHAOS_SCALE=$${CHAOS_SCALE:-5} $(BIN)/pytest -m "chaos or model_long" tests/integration/chaos tests/integration/test_final_state.py

test: $(INSTALLED) kafka-jars postgres-server lint typecheck ## the whole suite (what CI runs)
	$(BIN)/pytest

demo: $(INSTALLED) kafka-jars ## broker + sandbox + sample orders + consumer, then a summary
	$(BIN)/consumer demo

run: $(INSTALLED) ## the service itself, configured by CONSUMER_* variables (see README)
	$(BIN)/consumer run

sandbox: $(INSTALLED) ## the vendor sandbox alone on 127.0.0.1:8900
	$(BIN)/consumer sandbox --port 8900 --record-dir .demo/sandbox

bench: $(INSTALLED) kafka-jars postgres-server ## throughput/latency benchmark (BASELINE=<git-ref> to compare; BENCH_ARGS=...)
	$(BIN)/python -m consumer.devenv.bench $(if $(BASELINE),--baseline $(BASELINE)) $(BENCH_ARGS)

status: $(INSTALLED) ## ledger figures (delivered, dead-lettered, open window)
	$(BIN)/consumer status

clean: ## remove the venv, caches and demo state (not the Kafka jar cache)
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
