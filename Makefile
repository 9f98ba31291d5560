# paycell: two commands do all the set-up on a fresh Debian machine with Python 3.11.
#   make run    the whole local stack on embedded defaults (gateway on http://127.0.0.1:8080)
#   make test   the test suite (unit, integration on real redis-server + Ray, end-to-end)
#   make bench  the benchmark (starts its own stack, drives it with wrk)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo)

# Ray on Linux advertises the machine's outward address unless this is set before it starts.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: run test test-fast bench system-deps bench-deps clean

system-deps:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq redis-server; }

bench-deps: system-deps
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk; }

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/activate setup.cfg pyproject.toml
	$(BIN)/pip install -q -e ".[test]"
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[test,bench]"
	touch $@

run: system-deps $(VENV)/.installed
	$(BIN)/paycell up

test: system-deps $(VENV)/.installed
	$(BIN)/pytest -q

test-fast: $(VENV)/.installed
	$(BIN)/pytest -q tests/unit

bench: bench-deps $(VENV)/.installed-bench
	$(BIN)/python -m bench.run

clean:
	rm -rf .paycell .pytest_cache .mypy_cache .hypothesis
