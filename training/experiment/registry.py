"""What `train register` registers, on any backend: both arms' final models of a pair into a model registry, tagged with the pair.

Two registries, one result: on Azure ML the workspace's model registry (each model a reference to
its job's output, `azureml://jobs/<job>/outputs/arm_dir/paths/model`, nothing copied); locally the
MLflow model registry of the tracking store (each model the arm's `model/` folder). Either way the
models are `<name>-control` and `<name>-experiment`, where `<name>` is the experiment's `name`
(on Azure the jobs' experiment, which is `name` unless `azure.experiment_name` overrides it;
`--name` chooses another), and each version is tagged with `pair_id`, `arm`, the final metrics
(`final_eval_loss`, ...), the data it was trained on, and the pair's provenance tags.

Registration is idempotent: an arm whose model already has a version tagged with this pair id is
reported, not registered again. Both arms are checked before either is registered, so a pair with
an unfinished arm registers nothing.
"""

from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from training.errors import BadInput, Failed
from training.experiment.config import ARMS

_FALLBACK_METRICS = ("eval_loss", "train_loss", "loss", "perplexity")
MAX_TAG = 256
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


class NotFinished(Failed):
    """An arm has no final model yet (its job did not complete): exit 1, nothing registered."""


class BadPair(BadInput):
    """No such pair, or it needs --replicate (bad input: exit 2)."""


@dataclass
class ArmModel:
    """What one arm registers."""

    arm: str
    name: str
    source: str
    tags: dict[str, str]
    description: str
    run_id: str | None = None
    local_dir: Path | None = None


@dataclass
class Registered:
    arm: str
    name: str
    version: str
    created: bool
    note: str | None = None  # e.g. a version that could not be linked to the arm's run


def metric_tags(metrics: dict) -> dict[str, str]:
    """The final metrics as tags: `final_*` as logged; else the usual ones, named `final_*`."""
    numeric = {k: v for k, v in metrics.items()
               if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
    final = {k: v for k, v in numeric.items() if k.startswith("final_")}
    if not final:
        final = {f"final_{k}": numeric[k] for k in _FALLBACK_METRICS if k in numeric}
    return {k: f"{v:.6g}" for k, v in sorted(final.items())}


def clean_tags(tags: dict) -> dict[str, str]:
    return {str(k): str(v)[:MAX_TAG] for k, v in tags.items() if v is not None and str(v) != ""}


def pick_replicate(jobs_by_arm: dict[str, list], replicate: int | None, key) -> dict:
    """One job (or folder) per arm: the pair's, or replicate K's when it has several."""
    chosen = {}
    present = sorted({str(key(i)) for items in jobs_by_arm.values() for i in items})
    if replicate is not None and len(present) > 1 and str(replicate) not in present:
        raise BadPair(f"no replicate {replicate}: the pair's replicates are {', '.join(present)}")
    for arm in ARMS:
        items = jobs_by_arm.get(arm, [])
        if replicate is not None:
            items = [i for i in items if key(i) == str(replicate)]
        if len(items) > 1:
            found = sorted({key(i) for i in items})
            raise BadPair(f"the pair has {len(found)} seed replicates ({', '.join(found)}): "
                          "pass --replicate K")
        if not items:
            what = f" for replicate {replicate}" if replicate is not None else ""
            raise BadPair(f"the pair has no {arm} arm{what}")
        chosen[arm] = items[0]
    return chosen


@contextmanager
def short_requests():
    """A tracking store that does not answer: fail in seconds, not after minutes of retries."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                            "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def find_run(client, run_id: str | None, pair_id: str, arm: str, experiment: str | None):
    """The arm's MLflow run: by id (an Azure job's run id is the job name), else by its tags."""
    if run_id:
        try:
            return client.get_run(run_id)
        except Exception:  # not in this store: look it up by the tags every run carries
            pass
    exp = client.get_experiment_by_name(experiment) if experiment else None
    ids = [exp.experiment_id] if exp is not None else [
        e.experiment_id for e in client.search_experiments()]
    if not ids:
        return None
    runs = client.search_runs(ids, f"tags.pair_id = '{pair_id}' and tags.arm = '{arm}'",
                              max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def run_metrics(uri: str, run_id: str | None, pair_id: str, arm: str,
                experiment: str | None) -> tuple[dict[str, str], str | None, str | None]:
    """(final metric tags, run id, why not) from the tracking store; empty when unreachable."""
    try:
        from mlflow import MlflowClient

        with short_requests():
            run = find_run(MlflowClient(uri), run_id, pair_id, arm, experiment)
    except Exception as e:  # the store is unreachable, or the azureml plugin is missing
        from training.experiment.tracking import redacted

        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        return {}, None, redacted(f"tracking store unreachable ({first})")
    if run is None:
        return {}, None, f"no MLflow run of {pair_id} {arm} in the tracking store"
    return metric_tags(run.data.metrics), run.info.run_id, None


def check_names(models: list[ArmModel]) -> None:
    """Both models' names are valid before either is registered (an experiment name near the
    limit could fit `-control` and not `-experiment`: half a pair registered)."""
    for m in models:
        if not MODEL_NAME.fullmatch(m.name):
            raise BadPair(f"model name {m.name!r}: at most 255 letters, digits, - _ . starting "
                          "with a letter or digit; choose one with --name")
