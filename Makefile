# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test check install bench bench-viewer

run:
	bash scripts/run.sh $(ARGS)

test:
	bash scripts/test.sh

check: $(VENV)/.test
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/mypy

bench: $(VENV)/.test
	$(BIN)/python bench/run.py $(ARGS)

bench-viewer: $(VENV)/.test
	$(BIN)/python bench/viewer.py $(ARGS)

install: $(VENV)/.runtime

$(VENV)/.runtime: pyproject.toml
	bash scripts/venv.sh
	touch $@

$(VENV)/.test: pyproject.toml
	bash scripts/venv.sh test
	touch $@
