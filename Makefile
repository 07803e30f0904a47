# The README's two commands. Both set themselves up on a fresh machine (create .venv, install).
#   make run    the local paired experiment: both arms of experiments/local.yaml on this machine
#   make test   ruff and the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint install clean

# torch==2.13.0 goes in first, pinned. PyPI's Linux wheel of it is the CUDA build (gigabytes of
# nvidia-* packages); on a machine without a GPU, TORCH_INDEX=https://download.pytorch.org/whl/cpu
# installs the CPU build of the same version instead. Everything else resolves together in one
# install: azureml-mlflow caps mlflow-skinny and azure-storage-blob, and installed afterwards it
# would break the environment. A .venv of an older Python is made again.
TORCH_INDEX ?=
NEEDS_PY311 := import sys; sys.exit(sys.version_info < (3, 11))
$(STAMP): pyproject.toml
	@$(PYTHON) -c '$(NEEDS_PY311)' || { echo "Python 3.11 or newer is needed: $(PYTHON) is $$($(PYTHON) -V 2>&1); try make PYTHON=python3.11 ..."; exit 1; }
	@$(BIN)/python -c '$(NEEDS_PY311)' 2>/dev/null || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	@echo "installing the project into $(VENV) (once; a few minutes)"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[all]'
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/train run --config experiments/local.yaml

lint: $(STAMP)
	$(BIN)/ruff check .

# pytest exits 5 when it collects no test: that fails here like any other non-zero exit.
# Two pytest-xdist workers (CI has 2 cores; most tests that train wait on a subprocess, one core
# each). tests/conftest.py schedules them: test_compare's module (its fixture trains the pairs)
# on one worker, every other test on its own. `make test TEST_WORKERS=0` runs the suite serially.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

clean:
	rm -rf $(VENV) runs mlruns mlflow.db .pytest_cache .ruff_cache
