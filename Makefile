# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install
# everything the project needs from its own pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RTD := $(VENV)/bin/retentiond --config config/retentiond.yaml
STAMP := $(VENV)/.installed
# CLI tests run in-process, so the suite is mostly CPU: on two cores three workers stealing
# each other's queued tests finish first (measured -n 2/3/4: 61/48-52/55-57 s with worksteal,
# 67-71 s for all three with the default load scheduling, whose tail waits on slow tests).
TEST_WORKERS ?= 3

.PHONY: demo test check lint types bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) config/demo_db.py --dir .demo
	$(RTD) config validate
	$(RTD) plan
	$(RTD) run
	$(RTD) audit verify
	$(RTD) audit export --format html -o .demo/audit-report.html
	$(RTD) audit export --format json -o .demo/audit.json
	@echo "demo done: open .demo/audit-report.html"

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check retentiond tests bench config

types: $(STAMP)
	$(VENV)/bin/mypy

# What .ci/run runs, in this order (it also starts the databases the tests need).
check: lint types test

bench: $(STAMP)
	$(PY) bench/sweep.py

clean:
	rm -rf $(VENV) .demo dist build .pytest_cache .hypothesis
