# The project's commands. Every target installs the virtual environment first,
# so on a fresh clone `make start` and `make test` work with nothing else typed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install start dev client dev-client test soak lint compliance clean

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

client: install ## run the echo client (WS_URL and the rest from the environment or .env; flags in ARGS)
	$(BIN)/echo-client $(ARGS)

dev-client: install ## the client, restarted when code in echo/ changes
	$(BIN)/watchfiles --filter python --target-type command '$(BIN)/python -m echo.client $(ARGS)' echo

test: install ## the whole test suite
	$(BIN)/python -m pytest

soak: install ## the reliability suite at its long scale (see README, "Reliability")
	SOAK=1 $(BIN)/python -m pytest -m soak

compliance: install ## the Autobahn TestSuite (517 cases) against the real server
	$(BIN)/python -m compliance

lint: install ## ruff and mypy, both clean
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache *.egg-info

.PHONY: bench bench-quick

bench: install ## the benchmark: real server vs bare aiohttp, 5 rounds (about 4 minutes)
	$(BIN)/python -m bench

bench-quick: install ## a short benchmark run (about a minute), as in CI
	$(BIN)/python -m bench --quick
