# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test check docs install bench bench-viewer

run:
	bash scripts/run.sh $(ARGS)

test:
	bash scripts/test.sh

check: $(VENV)/.test
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/mkdocs build --strict --site-dir site

# The documentation site, served at http://127.0.0.1:8000 while editing docs/.
docs: $(VENV)/.test
	$(BIN)/mkdocs serve

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
