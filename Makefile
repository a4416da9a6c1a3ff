# kflow — the two commands: `make run` and `make test` (see README.md).
# Everything is installed into .venv from setup.cfg; nothing is needed
# beyond Python 3.11+ and make.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= .kflow
PORT   ?= 8080

RUN_STAMP  := $(VENV)/.run-installed
TEST_STAMP := $(VENV)/.test-installed

.PHONY: run test test-fast lint typecheck bench bench-quick clean help

help:
	@echo "make run    - set up .venv and run kflow with an example workflow (Ctrl-C stops)"
	@echo "make test   - set up .venv with the test extras and run the whole test suite"
	@echo "make lint   - ruff;  make typecheck - mypy"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(TEST_STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres,compat]'
	@touch $@ $(RUN_STAMP)

# The embedded default: SQLite under $(DATA), the built-in std and py-std
# workers in the server process, the examples deployed, and the text
# pipeline run with live progress. The server keeps running afterwards.
run: $(RUN_STAMP)
	$(BIN)/kflow --log-level warning serve --port $(PORT) --db sqlite:///$(DATA)/kflow.db \
		--insecure-dev --deploy examples \
		--run examples/text_pipeline.yaml --input @examples/inputs/text_pipeline.json

# Exit status 5 (no tests collected) fails like any other error.
test: $(TEST_STAMP)
	$(BIN)/python -m pytest

test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -m "not slow" -x -q

lint: $(TEST_STAMP)
	$(BIN)/ruff check kflow contrib tests
	$(BIN)/ruff format --check kflow contrib tests

typecheck: $(TEST_STAMP)
	$(BIN)/mypy kflow contrib/kflow_llm

clean:
	rm -rf $(VENV) $(DATA) .pytest_cache .mypy_cache .ruff_cache build *.egg-info

# Benchmarks (bench/README.md): never part of `make test`. `make bench` runs
# every scenario and figure (~5 min); `make bench-quick` a reduced set (< 3 min).
# Both need Redis on 127.0.0.1:6379 and PostgreSQL (KFLOW_BENCH_POSTGRES_URL)
# for the celery and postgres configurations; without them those rows say why.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[postgres,bench]'
	@touch $@ $(RUN_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m bench.run --quick
