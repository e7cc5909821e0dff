# The two commands the README promises on a fresh machine:
#   make demo   runs a real workflow end to end on the embedded in-memory backend
#   make test   installs everything and runs the whole suite (starts SecantusDB itself)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck check bench clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The demo needs the package and its in-memory backend only: no test tools, no test server.
$(VENV)/.demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[memory]"
	touch $@

# Everything: the optional extras, then the development group (PEP 735; not published with the package).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[memory,otel,ui,prometheus]"
	$(BIN)/pip install --quiet --group dev
	touch $@ $(VENV)/.demo

demo: $(VENV)/.demo
	$(BIN)/python examples/quickstart.py

# Two test processes (pytest-xdist), each with its own SecantusDB server; TEST_WORKERS=0 runs in one.
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check bluestreak tests examples scripts $(wildcard benchmarks)

typecheck: $(VENV)/.installed
	$(BIN)/mypy bluestreak

check: lint typecheck test

# The browser of the dashboard's tests (tests/ui): Debian's Chromium; Playwright never downloads one. Needs root.
chromium:
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
