# The README's two set-up commands: `make demo` and `make test`. pip (not uv/poetry) so that torch and
# torchvision resolve from the wheels already on the machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test chromium lint docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# One process that trains the demo's cells side by side, one worker per core (see docs/training.md#threads).
demo: $(VENV)/.installed
	$(BIN)/pieceboard bench benchmarks/demo.toml

# tests/test_report.py renders report.html in headless Chromium. It is installed here, never inside the test suite:
# with apt-get when it is missing and apt-get runs as root. Where that cannot be done (no apt-get, not root, no
# network) the set-up goes on and that one test is skipped, saying why; a slow mirror is given up after 15 minutes.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium (apt-get) for the report's browser test"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    { timeout 300 apt-get update -q && timeout 900 apt-get install -y -q --no-install-recommends chromium; } \
	      >/dev/null 2>&1 || echo "note: apt-get could not install chromium: the report's browser test is skipped"; \
	  else \
	    echo "note: chromium is not installed (apt-get install chromium): the report's browser test is skipped"; \
	  fi; }

test: $(VENV)/.installed chromium
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q -n auto --dist worksteal

docs: $(VENV)/.installed
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) site
