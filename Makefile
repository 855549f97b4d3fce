# Two entry points for a newcomer (see README): `make demo` and `make test`.
# Both create the environment (.venv, Python 3.12, one pip call) when it is missing or stale.
VENV ?= .venv
OUT ?= outputs/demo

.PHONY: env demo test lint clean

env:
	@bash scripts/setup_env.sh

demo: env
	$(VENV)/bin/vla demo --out $(OUT)

test: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest -q tests

lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache
