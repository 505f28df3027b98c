# The project's commands. Every target installs the virtual environment first,
# so on a fresh clone `make start` and `make test` work with nothing else typed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install start dev test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

start: install ## run the server (PORT and the rest from the environment or .env)
	$(BIN)/echo-server

dev: install ## the server under adev runserver, reloaded on code change
	$(BIN)/python -m echo.dev

test: install ## the whole test suite
	$(BIN)/python -m pytest

lint: install ## ruff and mypy, both clean
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache *.egg-info

.PHONY: bench bench-quick

bench: install ## the benchmark: real server vs bare aiohttp, 5 rounds (about 6 minutes)
	$(BIN)/python -m echo.bench

bench-quick: install ## a short benchmark run (about a minute), as in CI
	$(BIN)/python -m echo.bench --quick
