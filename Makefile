# The two commands of the README: `make up` and `make test`. Nothing else is needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: test up lint check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check allq tests benchmarks
	$(BIN)/ruff format --check allq tests benchmarks
	$(BIN)/mypy
	$(BIN)/flake8-async --disable=ASYNC114,ASYNC124,ASYNC910,ASYNC911,ASYNC912,ASYNC913 $$(find allq tests benchmarks -name "*.py")

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The embedded cluster: 2 queue servers + 1 gateway on http://127.0.0.1:8090 (ARGS to add flags).
up: $(VENV)/.installed
	$(BIN)/allq up $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
