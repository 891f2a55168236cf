# ctxstyle: set-up, main job and tests.  `make reproduce` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The stamp names a hash of the dependency files, so a cached venv is reused exactly while they are unchanged.
DEPS_KEY := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.ctxstyle-deps-$(DEPS_KEY)
PROFILE ?= auto

.PHONY: setup reproduce test test-fast notebooks-smoke benchmarks clean-results

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)
	$(PY) -m pip install --no-deps -q -e .

## Main job: every notebook in order with papermill (PROFILE=smoke|cpu|paper, default picked from the hardware)
reproduce: setup
	$(PY) -m reproduce --profile $(PROFILE)

## The test suite (CI runs exactly this)
test: setup
	$(PY) -m pytest -q

benchmarks: setup
	$(PY) -m reproduce.benchmarks
