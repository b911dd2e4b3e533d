# The README's two set-up commands: `make demo` and `make test`. pip (not uv/poetry) so that torch and
# torchvision resolve from the wheels already on the machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# One process that trains the demo's cells side by side, one worker per core (see docs/training.md#threads).
demo: $(VENV)/.installed
	$(BIN)/pieceboard bench benchmarks/demo.toml

test: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q -n auto --dist worksteal

docs: $(VENV)/.installed
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) site
