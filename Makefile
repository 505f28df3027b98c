# The project's commands. Every target installs the virtual environment first,
# so on a fresh clone `make start` and `make test` work with nothing else typed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install start dev client dev-client test test-oldest soak lint compliance clean

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

# The plain engine's suites (ENGINE=plain), run by test-oldest on the oldest aiohttp and
# gunicorn the dependency ranges in pyproject.toml allow, in a second virtual environment.
OLDEST_VENV := .venv-oldest
PLAIN_SUITES := tests/test_echo.py tests/test_lifecycle.py tests/test_admission.py \
	tests/test_masking.py tests/test_listeners.py tests/test_metrics.py tests/test_deflate.py \
	tests/test_logs.py tests/test_engines.py tests/test_framing.py tests/test_engine_contract.py \
	tests/test_tls.py tests/test_workers.py tests/test_httpecho.py tests/reliability

test-oldest: ## the plain engine's suites on the oldest aiohttp and gunicorn allowed (.venv-oldest)
	aiohttp=$$(sed -n 's/.*"aiohttp>=\([0-9.]*\),.*/\1/p' pyproject.toml) && \
	gunicorn=$$(sed -n 's/.*"gunicorn>=\([0-9.]*\),.*/\1/p' pyproject.toml) && \
	$(PYTHON) -m venv $(OLDEST_VENV) && \
	$(OLDEST_VENV)/bin/python -m pip install --quiet --upgrade pip && \
	$(OLDEST_VENV)/bin/python -m pip install --quiet -e '.[dev]' \
		"aiohttp==$$aiohttp" "gunicorn==$$gunicorn" && \
	$(OLDEST_VENV)/bin/python -c "import aiohttp, gunicorn; \
		print('aiohttp', aiohttp.__version__, 'gunicorn', gunicorn.__version__)" && \
	ENGINE=plain $(OLDEST_VENV)/bin/python -m pytest $(PLAIN_SUITES)

soak: install ## the reliability suite at its long scale (see README, "Reliability")
	SOAK=1 $(BIN)/python -m pytest -m soak

compliance: install ## the Autobahn TestSuite (517 cases) against the real server
	$(BIN)/python -m compliance

lint: install ## ruff and mypy, both clean
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(OLDEST_VENV) reports .pytest_cache .mypy_cache .ruff_cache *.egg-info

.PHONY: bench bench-quick

bench: install ## the benchmark: real server vs bare aiohttp, 5 rounds (about 4 minutes)
	$(BIN)/python -m bench

bench-quick: install ## a short benchmark run (about a minute), as in CI
	$(BIN)/python -m bench --quick
