# Entry points named in the README. Every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK := deploy/local/stack
PYTEST_ARGS ?=
CHAOS_ARGS ?=
BENCH_ARGS ?=

.PHONY: help venv stack-up stack-down stack-status stack-logs demo smoke test test-unit lag schemas-check k8s-validate monitoring-check bench-commands bench-projections bench-rebuild bench-ryw bench-outbox bench-system bench-queries chaos clean

help:
	@echo "make demo         bring the local stack up and play the story through gateway, query API and workers"
	@echo "make test         bring the local stack up (if needed) and run every test"
	@echo "make test-unit    pure unit tests, no services"
	@echo "make chaos        fault-injection run, ~10 min (CHAOS_ARGS=--short: the ~4 min variant the tests run; python -m tests.chaos --help)"
	@echo "make stack-up | stack-down | stack-status | stack-logs"

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
	touch $@

stack-up:
	$(STACK) up

stack-down:
	$(STACK) down

stack-status:
	$(STACK) status

stack-logs:
	$(STACK) logs

demo: venv stack-up
	$(BIN)/cqrs demo

smoke: venv stack-up
	$(BIN)/cqrs smoke

lag: venv stack-up
	$(BIN)/cqrs lag

schemas-check: venv stack-up
	$(BIN)/cqrs schemas check

k8s-validate: venv
	$(BIN)/python deploy/k8s/tools.py validate

monitoring-check: venv
	$(BIN)/python deploy/monitoring/tools.py check

test: venv stack-up
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

bench-commands: venv stack-up
	$(BIN)/python -m benchmarks.commands

bench-projections: venv stack-up
	$(BIN)/python -m benchmarks.projections

bench-rebuild: venv stack-up
	$(BIN)/python -m benchmarks.rebuild

bench-ryw: venv stack-up
	$(BIN)/python -m benchmarks.read_your_writes

bench-outbox: venv stack-up
	$(BIN)/python -m benchmarks.outbox_prune

bench-system: venv stack-up
	$(BIN)/python -m benchmarks.system $(BENCH_ARGS)

bench-queries: venv stack-up
	$(BIN)/python -m benchmarks.queries $(BENCH_ARGS)

chaos: venv stack-up
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)
