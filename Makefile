# The two commands of the README: `make demo` and `make test`. Both create the
# virtual environment and install what is missing, pinned by constraints.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed
EDITABLE := --no-deps --no-build-isolation -e . --config-settings editable_mode=strict

.PHONY: install demo up test lint unit integration bench bench-quick clean prometheus-tools

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

test: lint prometheus-tools
	$(BIN)/pytest

# promtool and prometheus (Debian's `prometheus` package, 2.42 on bookworm) for the
# deploy/prometheus tests: installed as root when missing; otherwise say how. Their
# tests skip without them, and under CI=true a skip fails the run.
prometheus-tools:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y --no-install-recommends prometheus \
	    || { apt-get update && apt-get install -y --no-install-recommends prometheus; }; \
	else \
	  echo "promtool/prometheus not found: sudo apt-get install -y prometheus (or run make test as root)"; \
	fi

unit: install
	$(BIN)/pytest tests/unit

# The CX page's browser test drives Debian's chromium through Playwright (a test
# tool's own browser download fails here): install it when missing and we are root.
.PHONY: chromium
test integration: chromium
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium (browser test of the CX page)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "chromium is missing and we are not root: apt-get install chromium"; \
	  fi; }

integration: install
	$(BIN)/pytest tests/integration

# Benchmarks are scripts that print figures into a table and build/bench.json (README,
# "Performance"): drain, baseline, ceiling, freshness, memory, py-spy profile of the
# worker, then the HTTP SELECT benchmark; then one outcome partition's memory against
# distinct customers, in memory and spilling. One run each; bench-quick is the same, smaller.
bench: install
	$(BIN)/python -m tests.perf.bench --events 1000000 --rate 10000 --fresh-seconds 30 \
	  --naive-seconds 60 --drain-budget 2400 --fresh-wait 120 --memory-budget 600 --http-seconds 30
	$(BIN)/python -m tests.perf.outcome_memory --customers 300000 --cache 20000

bench-quick: install
	$(BIN)/python -m tests.perf.bench --events 100000 --rate 10000 --fresh-seconds 10 \
	  --naive-seconds 20 --drain-budget 300 --fresh-wait 60 --memory-budget 180 --http-seconds 10
	$(BIN)/python -m tests.perf.outcome_memory --customers 100000 --cache 20000

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache .hypothesis
