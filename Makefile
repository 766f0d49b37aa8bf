# `make test` and `make demo` work on a fresh machine: they create .venv and install pinned versions.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint ops-table clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,models]"
	touch $(STAMP)

# CI has 2 cores: one pytest-xdist worker each. --dist loadfile keeps a test file on one worker, so its module-scoped
# fixtures and per-module caches (a model lowered once for several tests) are built once, not once per worker.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: $(STAMP)
	$(VENV)/bin/neutron demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

ops-table: $(STAMP)
	$(PY) -m neutron_backend.ops.support_table > docs/op-support.csv

clean:
	rm -rf $(VENV) build *.egg-info
