# The project's commands; `make help` lists them. Every target installs what it needs
# into .venv first, so on a fresh clone `make start` and `make test` work with nothing
# else typed: `start` and `client` only the runtime dependencies, the others the
# development tools too.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install install-runtime start dev client dev-client test test-oldest soak lint compliance clean deploy-lint image-test

help: ## list the targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-z][a-z-]*:.*## / { printf "  make %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install-runtime: $(RUNTIME) ## install the package and its runtime dependencies only

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $(RUNTIME)

install: $(STAMP) ## install the package with the development tools (tests, lint, adev)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(RUNTIME) $(STAMP)

start: install-runtime ## run the server (PORT and the rest from the environment or .env)
	$(BIN)/echo-server

client: install-runtime ## run the echo client (flags in ARGS, e.g. ARGS='--count 3')
	$(BIN)/echo-client $(ARGS)

dev: install ## the server under adev runserver, reloaded on code change
	trap "" INT; exec $(BIN)/python -m echo.dev

dev-client: install ## the client, restarted when code in echo/ changes
	trap "" INT; exec $(BIN)/python -m echo.dev client $(ARGS)

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

soak: install ## the reliability suite at its long scale (see docs/testing.md)
	SOAK=1 $(BIN)/python -m pytest -m soak

compliance: install ## the Autobahn TestSuite (517 cases) against the real server, fast and plain engine at once
	$(BIN)/python -m compliance

lint: install ## ruff and mypy, both clean
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean: ## remove .venv, .venv-deploy, .venv-oldest and every cache and report
	rm -rf $(VENV) $(DEPLOY_VENV) $(OLDEST_VENV) reports .pytest_cache .mypy_cache .ruff_cache *.egg-info

# The container image and the Kubernetes manifests (docs/container.md). Their linters
# live in an environment of their own: checkov alone brings about a hundred packages.
DEPLOY_VENV := .venv-deploy
DEPLOY_BIN := $(DEPLOY_VENV)/bin
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed
# Kubernetes versions the manifests are validated against (kubernetes-validate's schemas).
K8S_VERSIONS := 1.29.0 1.30.0 1.31.0 1.32.0 1.33.0 1.34.0 1.35.0 1.36.0 1.37.0

$(DEPLOY_STAMP): pyproject.toml
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_BIN)/python -m pip install --quiet --upgrade pip
	$(DEPLOY_BIN)/python -m pip install --quiet -e '.[deploy]'
	touch $(DEPLOY_STAMP)

deploy-lint: $(DEPLOY_STAMP) ## hadolint, the manifests rendered by kustomize against each K8S_VERSIONS schema, checkov
	$(DEPLOY_BIN)/hadolint Dockerfile
	$(DEPLOY_BIN)/kubectl kustomize deploy/kubernetes > $(DEPLOY_VENV)/rendered.yaml
	for version in $(K8S_VERSIONS); do \
		$(DEPLOY_BIN)/kubernetes-validate --strict --quiet -k $$version $(DEPLOY_VENV)/rendered.yaml \
			|| exit 1; \
	done
	$(DEPLOY_BIN)/checkov --quiet --compact --skip-download --framework kubernetes dockerfile \
		--file Dockerfile $(wildcard deploy/kubernetes/*.yaml deploy/kubernetes/*/*.yaml)

image-test: install deploy-lint ## deploy-lint, then build the image with podman and test it (a few minutes)
	IMAGE_TEST=1 PATH="$(CURDIR)/$(DEPLOY_BIN):$$PATH" $(BIN)/python -m pytest tests/test_image.py tests/test_deploy_lint.py
	@cat reports/image.txt

.PHONY: bench bench-quick

bench: install ## the benchmark: real server vs bare aiohttp, 5 rounds (about 4 minutes)
	$(BIN)/python -m bench

bench-quick: install ## a short benchmark run (about a minute), as in CI
	$(BIN)/python -m bench --quick
