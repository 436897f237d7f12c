# The two commands of the README: `make demo` and `make test`. Both create the
# virtual environment and install what is missing, pinned by constraints.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed
EDITABLE := --no-deps --no-build-isolation -e . --config-settings editable_mode=strict

.PHONY: install demo up test lint unit integration bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(DEPS): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt setuptools==80.9.0 -e ".[dev]" --config-settings editable_mode=strict
	touch $(DEPS)

# Strict editable installs link files one by one: re-link so new modules are seen.
install: $(DEPS)
	@$(BIN)/python -m pip install -q --disable-pip-version-check $(EDITABLE)

demo: install
	$(BIN)/touchstream demo

up: install
	$(BIN)/touchstream up

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p touchstream
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

unit: install
	$(BIN)/pytest tests/unit

integration: install
	$(BIN)/pytest tests/integration

# Benchmarks are scripts that print figures (and merge them into build/bench.json).
bench: install
	$(BIN)/python -m tests.perf.bench_http --rate 10000 --seconds 30

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache .hypothesis
