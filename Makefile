# Two commands do all set-up: `make run` (the main job) and `make test` (the whole suite);
# `make test-fast` runs the tests that start no Ray.
# Each creates .venv when missing and installs what is needed, idempotently.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/quick.yaml
TORCH := torch==2.13.0
CPU_INDEX := https://download.pytorch.org/whl/cpu
# The offline install for a GPU node (tools/wheelhouse.py): target Python, platform, folder.
WHEELS ?= wheels
WHEEL_PYTHON ?= 3.12
WHEEL_PLATFORM ?= manylinux2014_x86_64

.PHONY: run test test-fast lint bench setup clean-venv wheelhouse install-offline

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# No NVIDIA GPU: the CPU build from PyTorch's CPU index first (PyPI's Linux wheel is the
	@# multi-GB CUDA build); the plain install only when that index cannot be reached.
	@if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then \
		echo "no NVIDIA GPU found: installing the CPU build $(TORCH) from $(CPU_INDEX)"; \
		$(PY) -m pip install --quiet --retries 1 --timeout 15 "$(TORCH)" --index-url $(CPU_INDEX) || \
		{ echo "the CPU index cannot be reached: installing $(TORCH) from the default index"; \
		  $(PY) -m pip install --quiet "$(TORCH)"; }; \
	fi
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m launch.train --config $(CONFIG)

# `make test` is the whole suite in one pytest run with TEST_WORKERS pytest-xdist workers: one
# runs the modules with Ray tests (marked slow; RAY_MODULES in tests/conftest.py), one test
# after the other on one Ray cluster, while the others run the other modules, one whole module
# at a time. The Ray tests are CPU-bound: two of them at once on 2 cores each take about
# twice as long. They leave about a quarter of the CPU idle (process starts, polls), which the
# other tests use. A plain `pytest` runs all in one process.
TEST_WORKERS ?= 3
FAST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=15

# Every test that starts no Ray (the inner loop): a Ray node started in the pytest process
# fails the test (tests/conftest.py), so a Ray test without the slow mark cannot hide here.
test-fast: $(STAMP)
	CASCADEVAE_TEST_NO_RAY=1 $(PY) -m pytest -m "not slow" -n $(FAST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@# The packages are listed under [tool.mypy] files in pyproject.toml.
	$(PY) -m mypy
	@# The layer contracts under [tool.importlinter] in pyproject.toml.
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	$(PY) -m benchmarks.data
	$(PY) -m benchmarks.step
	$(PY) benchmarks/solver.py
	$(PY) -m benchmarks.overhead
	$(PY) -m benchmarks.fast_step
	$(PY) -m benchmarks.data_path

# Every wheel a GPU node needs beyond what it has (torch, numpy, pyarrow, ...), for
# WHEEL_PYTHON on WHEEL_PLATFORM, into WHEELS (at most 60 MiB; needs PyPI).
wheelhouse: $(STAMP)
	$(PY) tools/wheelhouse.py build --out $(WHEELS) --python-version $(WHEEL_PYTHON) \
		--platform $(WHEEL_PLATFORM)

# On the GPU node, with no index: the wheelhouse into PYTHON (the node's, torch installed),
# then this checkout in editable mode.
install-offline:
	$(PYTHON) -m pip install --no-index --find-links $(WHEELS) --no-deps -r $(WHEELS)/requirements.txt
	$(PYTHON) -m pip install --no-index --find-links $(WHEELS) --no-deps -e .
	$(PYTHON) -c "import ray.train, ray.tune, pyomo.environ, highspy, trainer, solver; print('offline install: ok')"

clean-venv:
	rm -rf $(VENV)
