"""MLflow tracking of one arm: the run, its tags and params, resumed across restarts.

The recipe opens the run itself on rank 0 (HF's MLflow callback would end it when training ends and
a later evaluate() would open a stray one), and remembers its id in the arm's folder so a resumed arm
continues the same run. Inside an Azure ML job, MLflow's own environment (MLFLOW_RUN_ID) wins.
"""

from __future__ import annotations

import math
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

from training import __version__

RUN_ID_FILE = "mlflow_run_id"


def code_version() -> str:
    """The git commit of the code that runs (with -dirty), else the package version."""
    if env := os.environ.get("PAIRED_FINETUNE_CODE_VERSION"):
        return env
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=5, check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"paired-finetune {__version__}"


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """{"training": {"seed": 1}} -> {"training.seed": "1"}: MLflow params are flat strings."""
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def tracking_uri(explicit: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else MLflow's default local store (made absolute
    so that every process of a pair writes to the same database whatever its working directory)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path('mlflow.db').resolve()}"


@contextmanager
def arm_run(arm_dir: Path, experiment: str, run_name: str, tags: dict, params: dict):
    """Open (or reopen) the arm's MLflow run, with system metrics, in the store tracking_uri()
    names."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())

    id_file = arm_dir / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.exists() else None
    if run_id is None and not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_id=run_id, run_name=run_name, log_system_metrics=True) as run:
        if run_id is None:
            id_file.write_text(run.info.run_id)
            mlflow.set_tags(tags)
            mlflow.log_params(params)
        yield run


def log_metrics(metrics: dict, step: int) -> None:
    import mlflow

    clean = {k: float(v) for k, v in metrics.items()
             if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_artifacts(*paths: Path) -> None:
    import mlflow

    for path in paths:
        mlflow.log_artifact(str(path))
