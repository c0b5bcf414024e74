# crmsync: two commands, on a fresh Debian machine as root with only Python present.
#   make demo   set up everything, start the local stack, load the demo, show the result
#   make test   set up everything, start the stack, run every test, stop what it started
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TEST_STACK := .stack/test
DEMO_STACK := .stack/demo

.PHONY: demo test lint format venv stack-install demo-stop clean bench

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
	  echo "installing python3-venv (needed to create $(VENV))"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

stack-install:
	bash stack/install.sh

lint: venv
	$(BIN)/ruff check src tests stack bench
	$(BIN)/ruff format --check src tests stack bench

format: venv
	$(BIN)/ruff format src tests stack bench
	$(BIN)/ruff check --fix src tests stack bench

# The pytest fixtures start the test stack once and stop it at the end; the trap also stops it
# if pytest itself is killed.
test: venv stack-install lint
	@trap 'bash stack/down.sh $(TEST_STACK) >/dev/null 2>&1 || true' EXIT; \
	CRMSYNC_TEST_STACK_DIR=$(CURDIR)/$(TEST_STACK) $(BIN)/pytest -q $(PYTEST_ARGS)

# The demo uses the embedded database (CRMSYNC_HOME, default ~/.local/share/crmsync) and
# leaves the stack running so the mailboxes can be looked at; `make demo-stop` stops it.
demo: venv stack-install
	STACK_USERS_FILE=demo/mail-accounts.txt bash stack/up.sh $(DEMO_STACK)
	$(BIN)/crmsync demo --stack $(DEMO_STACK)/stack.json --accounts demo/mail-accounts.txt

# Benchmarks print ratios against a baseline measured in the same run (docs/performance.md).
# The incoming-email bench starts its own stack in .stack/bench and stops it at the end; the
# scheduler bench (10,000 mailboxes, ~20 min) its own in .stack/bench-sched.
bench: venv stack-install
	$(BIN)/python -m bench.import_bench
	$(BIN)/python -m bench.incoming_bench
	$(BIN)/python -m bench.scheduler_bench
	$(BIN)/python -m bench.outgoing_bench
	$(BIN)/python -m bench.dav_bench

demo-stop:
	bash stack/down.sh $(DEMO_STACK)
	-$(BIN)/crmsync db stop

clean: demo-stop
	rm -rf .stack
