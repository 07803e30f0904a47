"""Small experiment files and commands for tests that train the tiny Llama for real."""

import sys
from pathlib import Path

import yaml

from training.experiment.events import parse_event

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "data"


def write_experiment(folder: Path, *, method="full", max_steps=20, eval_every=10, save_every=10,
                     batch_size=8, learning_rate=2e-3, control=None, experiment=None,
                     eval_file=DATA / "eval.jsonl", name="test-pair", **extra) -> Path:
    """A tiny-llama experiment file in `folder` (seconds per arm on 2 cores)."""
    training = {"max_steps": max_steps, "learning_rate": learning_rate, "warmup": 0.1,
                "per_device_batch_size": batch_size, "max_seq_length": 256, "seed": 7,
                "eval_every": eval_every, "save_every": save_every, "keep_checkpoints": 2,
                "log_every": 2}
    for key in ("early_stopping", "gradient_checkpointing"):
        if key in extra:
            training[key] = extra.pop(key)
    cfg = {
        "name": name,
        "base_model": "tiny-llama",
        "method": method,
        "training": training,
        "arms": {"control": {"train": str(control or DATA / "control.jsonl")},
                 "experiment": {"train": str(experiment or DATA / "experiment.jsonl")}},
        "eval": str(eval_file) if eval_file else None,
        **extra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def recipe_cmd(cfg_path: Path, out: Path, arm: str, pair_id: str = "test-pair-0") -> list[str]:
    return [sys.executable, "-m", "training.recipe", "--config", str(cfg_path), "--arm", arm,
            "--output-dir", str(out), "--pair-id", pair_id]


def read_events(stream) -> list[dict]:
    """The `@@ {...}` progress events in what is left of a recipe's stdout."""
    return [e for e in map(parse_event, stream) if e is not None]
