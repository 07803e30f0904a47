# The README's two commands. Both set themselves up on a fresh machine (create .venv, install).
#   make run    the local paired experiment: both arms of experiments/local.yaml on this machine
#   make test   ruff and the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint install clean

# torch==2.13.0 goes in first: any other spec pulls gigabytes of CUDA packages. Everything else
# resolves together in one install: azureml-mlflow caps mlflow-skinny and azure-storage-blob, and
# installed afterwards it would break the environment.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
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
