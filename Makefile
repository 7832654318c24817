# modelplane — two commands for a newcomer:
#   make run    start the service on embedded defaults (FerretDB under ./.state, local runtime)
#   make test   every quality gate and the whole test suite against real servers
# Both install what they need (uv, the locked Python dependencies, the test servers).

SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(PYTHON) -m uv
RUN := $(UV) run --frozen

.PHONY: run test setup testbed testbed-ferretdb lint format typecheck imports schema schema-check pytest bench clean

setup:
	@$(UV) --version >/dev/null 2>&1 || { echo "[setup] installing uv $(UV_VERSION) from PyPI"; $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"; }
	@$(UV) sync --frozen --quiet

testbed:
	@bash deploy/testbed/build.sh

testbed-ferretdb:
	@ONLY=ferretdb bash deploy/testbed/build.sh

run: setup testbed-ferretdb
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

pytest: setup testbed
	$(RUN) pytest

test: setup testbed lint typecheck imports schema-check pytest

bench: setup testbed
	@for script in bench/*.py; do echo "== $$script"; $(RUN) python "$$script" || exit 1; done

clean:
	rm -rf .state .mypy_cache .ruff_cache .pytest_cache tests/artifacts
