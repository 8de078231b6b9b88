# Two commands do all set-up: `make run` (the main job) and `make test` (the whole suite);
# `make test-fast` runs the tests that start no Ray.
# Each creates .venv when missing and installs what is needed, idempotently.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/quick.yaml

.PHONY: run test test-fast lint bench setup clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# No NVIDIA GPU: take the CPU wheel first so that `torch` below does not pull a CUDA build.
	@if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then \
		echo "no NVIDIA GPU found: installing the CPU build torch==2.13.0"; \
		$(PY) -m pip install --quiet "torch==2.13.0" || \
		$(PY) -m pip install --quiet "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m launch.train --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest

# Every test that starts no Ray (the inner loop): a Ray node started in the pytest process
# fails the test (tests/conftest.py), so a Ray test without the slow mark cannot hide here.
test-fast: $(STAMP)
	CASCADEVAE_TEST_NO_RAY=1 $(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@# The packages are listed under [tool.mypy] files in pyproject.toml.
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	$(PY) -m benchmarks.data
	$(PY) -m benchmarks.step
	$(PY) benchmarks/solver.py
	$(PY) -m benchmarks.overhead
	$(PY) -m benchmarks.fast_step
	$(PY) -m benchmarks.data_path

clean-venv:
	rm -rf $(VENV)
