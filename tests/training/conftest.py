"""Fixtures shared by the training tests: the built-in tiny Llama, built once per session."""

import os

import pytest


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """Path (str) of the tiny Llama, built into a temporary cache folder once per session.

    PAIRED_FINETUNE_CACHE points at that folder for the rest of the session, so code under test
    that calls `resolve_base_model("tiny-llama")` (and subprocesses it starts) reuses the build
    instead of writing to the user's cache."""
    from training.models import ensure_tiny_llama

    cache = tmp_path_factory.mktemp("paired-finetune-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAIRED_FINETUNE_CACHE", str(cache))
        yield str(ensure_tiny_llama())


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_path):
    """The tiny Llama's tokenizer, through `load_tokenizer` (Llama-3 chat template, pad token)."""
    from training.models import load_tokenizer

    return load_tokenizer(tiny_model_path)


@pytest.fixture
def tracking_env(tmp_path, tiny_model_path) -> dict:
    """Environment for a training subprocess: a private MLflow store, fast system metrics."""
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1",
        "OMP_NUM_THREADS": "1",
    }
