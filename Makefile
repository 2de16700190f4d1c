# `make demo`: set up and run a real agent turn offline (replay provider, real sandbox).
# `make test`: set up and run the test suite and the linter.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# DEMO_HOME=PATH puts the demo's home there; by default each run gets a fresh private
# folder from mktemp (a fixed /tmp path would collide between users and runs).
DEMO_HOME ?=

$(BIN)/agentd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

.PHONY: demo test bench lint
demo: $(BIN)/agentd
	@set -e; home="$(DEMO_HOME)"; \
	if [ -z "$$home" ]; then home="$$(mktemp -d "$${TMPDIR:-/tmp}/agentd-demo.XXXXXX")/home"; fi; \
	$(abspath $(BIN))/agentd init "$$home"; \
	cd "$$home" && $(abspath $(BIN))/agentd run --model replay:$(CURDIR)/examples/demo.jsonl \
	  "Write notes/hello.md with a greeting, then check it with the shell"; \
	echo "notes/hello.md in $$home:" && cat "$$home/notes/hello.md"

test: $(BIN)/agentd
	$(BIN)/ruff check agentd tests bench
	$(BIN)/python -m pytest

bench: $(BIN)/agentd
	@for b in run sandbox git tokens daemon $(wildcard bench/bridge.py); do \
	  b=$$(basename $$b .py); echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit 1; done

lint: $(BIN)/agentd
	$(BIN)/ruff check agentd tests bench
