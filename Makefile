# calmon: `make run` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
# The suite on this many pytest-xdist workers, a test file at a time per worker (its module fixtures
# stay whole): 13 minutes serially on CI's two cores, 8 with two workers. 1 runs it serially.
TEST_WORKERS ?= 2

.PHONY: run demo test lint format typecheck services bench clean

CLIENT := clients/python

$(VENV)/.installed: pyproject.toml $(CLIENT)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e $(CLIENT) -e .
	touch $@

$(STAMP): pyproject.toml $(CLIENT)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '$(CLIENT)[test]' -e '.[dev]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(VENV)/bin/calmon serve

demo: $(VENV)/.installed
	$(VENV)/bin/calmon demo

services:
	@bash .ci/ensure-services

lint: $(STAMP)
	$(VENV)/bin/ruff check monitor tests benchmarks $(CLIENT)
	$(VENV)/bin/ruff format --check monitor tests benchmarks $(CLIENT)

format: $(STAMP)
	$(VENV)/bin/ruff format monitor tests benchmarks $(CLIENT)
	$(VENV)/bin/ruff check --fix monitor tests benchmarks $(CLIENT)

typecheck: $(STAMP)
	$(VENV)/bin/mypy monitor
	cd $(CLIENT) && ../../$(VENV)/bin/mypy src

test: $(STAMP) services lint typecheck
	$(VENV)/bin/pytest $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

bench: $(STAMP) services
	$(PY) benchmarks/ingest.py --out benchmarks/RESULTS.md
	$(PY) benchmarks/calibration.py --out benchmarks/RESULTS.md
	$(PY) benchmarks/evaluation.py --out benchmarks/RESULTS.md
	$(PY) benchmarks/recalibration.py --out benchmarks/RESULTS.md
	$(PY) benchmarks/drift.py --out benchmarks/RESULTS.md --json benchmarks/drift-results.json
	$(PY) benchmarks/pages.py --out benchmarks/RESULTS.md
	$(PY) benchmarks/client.py --out benchmarks/RESULTS.md
	$(PY) benchmarks/accuracy.py --out benchmarks/RESULTS.md
	$(PY) benchmarks/advice.py --out benchmarks/RESULTS.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
