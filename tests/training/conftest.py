"""Fixtures shared by the training tests: the built-in tiny Llama, built once per session."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """Path (str) of the tiny Llama, built into a temporary cache folder once per session.

    PAIRED_FINETUNE_CACHE points at that folder for the rest of the session, so code under test
    that calls `resolve_base_model("tiny-llama")` (and subprocesses it starts) reuses the build
    instead of writing to the user's cache."""
    from training.experiment.models import ensure_tiny_llama

    cache = tmp_path_factory.mktemp("paired-finetune-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAIRED_FINETUNE_CACHE", str(cache))
        yield str(ensure_tiny_llama())


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_path):
    """The tiny Llama's tokenizer, through `load_tokenizer` (Llama-3 chat template, pad token)."""
    from training.experiment.models import load_tokenizer

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


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding a snapshot of meta-llama/Meta-Llama-3-8B (the tests are
    offline): pinning the production example resolves to HUB_COMMIT, as it would with the model
    downloaded once (`hf download`) and HF_HUB_OFFLINE=1."""
    from huggingface_hub import constants

    repo = tmp_path / "hf-cache" / "models--meta-llama--Meta-Llama-3-8B"
    (repo / "snapshots" / HUB_COMMIT).mkdir(parents=True)
    (repo / "snapshots" / HUB_COMMIT / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return HUB_COMMIT


@pytest.fixture
def fake():
    """A fake Azure ML workspace at the HTTP boundary (tests/training/fake_azure.py)."""
    from tests.training.fake_azure import FakeAzureML

    return FakeAzureML()


@pytest.fixture
def outputs_file(tmp_path):
    """The fake workspace's stack outputs, saved as `pulumi stack output --json` prints them."""
    import json

    from tests.training.fake_azure import OUTPUTS

    path = tmp_path / "stack-outputs.json"
    path.write_text(json.dumps(OUTPUTS))
    return str(path)


@pytest.fixture
def train(fake, outputs_file):
    """Run `train ...` against the fake workspace; returns the click result. `submit` gets the
    production example as its config unless one is given."""
    from click.testing import CliRunner

    from tests.training.fake_azure import FakeCredential
    from training.cli import main

    example = Path(__file__).resolve().parents[2] / "experiments" / "paired-comments.yaml"

    def invoke(*args, config=example):
        argv = list(args)
        if argv[0] == "submit" and "--config" not in argv:
            argv += ["--config", str(config)]
        if "--stack" not in argv and "--outputs-file" not in argv:
            argv += ["--outputs-file", outputs_file]
        return CliRunner().invoke(main, argv, obj={"azure_transport": fake,
                                                   "azure_credential": FakeCredential()})

    return invoke
