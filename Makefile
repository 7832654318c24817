# modelplane — two commands for a newcomer:
#   make run    start the service on embedded defaults (FerretDB under ./.state, local runtime)
#   make test   every quality gate and the whole test suite against real servers
# Both install what they need (uv, the locked Python dependencies, the test servers, the
# dashboard's npm packages and bundle; `make test` also Debian's Chromium for the browser test
# and llama.cpp's server for the real-engine tests).

SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(PYTHON) -m uv
RUN := $(UV) run --frozen

.PHONY: run test setup testbed testbed-ferretdb engine test-engine engine-vllm test-vllm dashboard browser lint format typecheck imports schema schema-check pytest bench clean

# The operator dashboard (dashboard/ -> modelplane/static/, git-ignored). npm ci runs only when
# package.json or package-lock.json is newer than the last install; esbuild only when a source,
# an operation or the installed packages are newer than the bundle.
DASHBOARD_STAMP := dashboard/node_modules/.installed
DASHBOARD_BUNDLE := modelplane/static/index.html
DASHBOARD_SOURCES := dashboard/build.mjs $(wildcard dashboard/src/* dashboard/src/pages/*) \
	$(wildcard graphql/operations/*.graphql graphql/operations/fragments/*.graphql)
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

setup:
	@$(UV) --version >/dev/null 2>&1 || { echo "[setup] installing uv $(UV_VERSION) from PyPI"; $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"; }
	@$(UV) sync --frozen --quiet

testbed:
	@bash deploy/testbed/build.sh

testbed-ferretdb:
	@ONLY=ferretdb bash deploy/testbed/build.sh

# The real inference engine of tests/test_real_engine.py: llama-cpp-python[server] built from
# source (llama.cpp, for this CPU) into /var/cache/modelplane/engines as root (where the engine user
# nobody can run it), else ~/.cache/modelplane/engines; once, about 8 minutes.
engine: setup
	@bash deploy/testbed/engine.sh

# Only the real-engine tests (they also run in `make pytest`).
test-engine: setup testbed engine
	$(RUN) pytest -m engine

# vLLM's CPU build (deploy/testbed/vllm.sh, about 4 GB) and its test, outside `make test`:
# vLLM takes minutes to start on 2 cores and holds about 4 GiB.
engine-vllm: setup
	@bash deploy/testbed/vllm.sh

test-vllm: setup testbed engine engine-vllm
	$(RUN) pytest -m vllm tests/test_vllm_engine.py

$(DASHBOARD_STAMP): dashboard/package.json dashboard/package-lock.json
	@command -v node >/dev/null || { echo "[dashboard] Node.js >= 20 is required (node is not on PATH)"; exit 1; }
	@echo "[dashboard] npm ci"
	@cd dashboard && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(DASHBOARD_BUNDLE): $(DASHBOARD_STAMP) $(DASHBOARD_SOURCES)
	@cd dashboard && node build.mjs

dashboard: $(DASHBOARD_BUNDLE)

# Headless Chromium for the browser test, from Debian (installed only when missing).
browser:
	@test -x $(CHROMIUM) || { echo "[browser] installing chromium with apt-get"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; } \
	  || { echo "[browser] could not install chromium (apt-get install chromium failed); the browser test needs $(CHROMIUM)"; exit 1; }
	@test -x $(CHROMIUM) || { echo "[browser] $(CHROMIUM) is still missing after apt-get install chromium"; exit 1; }

run: setup testbed-ferretdb dashboard
	@$(RUN) modelplane serve

lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: setup
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

typecheck: setup
	$(RUN) mypy .

imports: setup
	$(RUN) lint-imports

schema: setup
	$(RUN) modelplane schema export

schema-check: setup
	$(RUN) modelplane schema check

pytest: setup testbed engine dashboard browser
	$(RUN) pytest

test: setup testbed dashboard browser lint typecheck imports schema-check pytest

bench: setup testbed
	@for script in bench/api.py bench/download.py bench/fanout.py bench/gateway.py; do echo "== $$script"; $(RUN) python "$$script" || exit 1; done

clean:
	rm -rf .state .mypy_cache .ruff_cache .pytest_cache tests/artifacts modelplane/static dashboard/node_modules
