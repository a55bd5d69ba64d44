# Two commands set everything up on a fresh machine:
#   make demo   create .venv, install pathgen, run the built-in demo on CPU
#   make test   create .venv, install pathgen with its test extras, run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= demo_out

.PHONY: install install-dev demo test test-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'

demo: install
	$(BIN)/pathgen demo --out $(DEMO_OUT)

test: install-dev
	$(BIN)/python -m pytest -q

test-fast: install-dev
	$(BIN)/python -m pytest -q -m "not slow"

lint: install-dev
	$(BIN)/ruff check pathgen tests benchmarks
	$(BIN)/hadolint docker/Dockerfile

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
