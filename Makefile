# ctxstyle: set-up, main job and tests.  `make reproduce` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The stamp names a hash of the dependency files, so a cached venv is reused exactly while they are unchanged.
DEPS_KEY := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.ctxstyle-deps-$(DEPS_KEY)
PROFILE ?= auto
# extra options of `python -m reproduce`, e.g. ARGS=--reuse or ARGS="--only 03"
ARGS ?=

.PHONY: setup reproduce reproduce-reference readme-times test benchmarks

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)
	$(PY) -m pip install --no-deps -q -e .

## Main job: every notebook in order with papermill into a new results/runs/<profile>-<UTC time>/, then the
## reproduction check against the committed results/<profile> (PROFILE=smoke|cpu|paper, default from the hardware)
reproduce: setup
	$(PY) -m reproduce --profile $(PROFILE) $(ARGS)

## Maintainers: regenerate the committed results/<profile> in place (unchanged notebooks skipped; ARGS=--force)
reproduce-reference: setup
	$(PY) -m reproduce --update-reference --profile $(PROFILE) $(ARGS)

## The README's table of wall time per profile and machine, from results/<profile>/runs.json
readme-times: setup
	$(PY) -m reproduce.benchmarks.end_to_end --readme README.md

## The test suite (CI runs exactly this)
test: setup
	$(PY) -m pytest -q

benchmarks: setup
	$(PY) -m reproduce.benchmarks
