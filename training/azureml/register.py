"""`train register`: both arms' final models of a pair into a model registry, tagged with the pair.

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

import json
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from training.experiment.config import ARMS

JOB_OUTPUT = "arm_dir"  # the jobs' output folder (training.jobs); the model is its `model/`
_DATA_ID = re.compile(r"/data/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$")
_FALLBACK_METRICS = ("eval_loss", "train_loss", "loss", "perplexity")
MAX_TAG = 256
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


class NotFinished(Exception):
    """An arm has no final model yet (its job did not complete): exit 1, nothing registered."""


class BadPair(Exception):
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


def asset_id(uri: str) -> str:
    """A job input's data asset, as `azureml:name:version` (the service returns the long id)."""
    match = _DATA_ID.search(uri or "")
    return f"azureml:{match['name']}:{match['version']}" if match else uri


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


# ----------------------------------------------------------------------------- MLflow
@contextmanager
def _short_requests():
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

        with _short_requests():
            run = find_run(MlflowClient(uri), run_id, pair_id, arm, experiment)
    except Exception as e:  # the store is unreachable, or the azureml plugin is missing
        from training.experiment.tracking import redacted

        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        return {}, None, redacted(f"tracking store unreachable ({first})")
    if run is None:
        return {}, None, f"no MLflow run of {pair_id} {arm} in the tracking store"
    return metric_tags(run.data.metrics), run.info.run_id, None


# ----------------------------------------------------------------------------- Azure ML
def azure_models(jobs: list, pair_id: str, name: str | None, replicate: int | None,
                 metrics_for) -> list[ArmModel]:
    """Both arms' models from the pair's jobs; raises NotFinished if one did not complete.
    `metrics_for(job, arm) -> (tags, note)`."""
    from training.azureml.backend import _status

    by_arm: dict[str, list] = {}
    for job in jobs:
        by_arm.setdefault((job.tags or {}).get("arm"), []).append(job)
    chosen = pick_replicate(by_arm, replicate, lambda j: (j.tags or {}).get("replicate"))
    unfinished = {arm: (job.name, _status(job)) for arm, job in chosen.items()
                  if _status(job) != "Completed"}
    if unfinished:
        listed = ", ".join(f"{arm} ({n}: {s})" for arm, (n, s) in unfinished.items())
        raise NotFinished(f"not every arm completed: {listed}; only a completed job has a final "
                          "model. Nothing was registered.")
    out = []
    for arm, job in chosen.items():
        base = name or job.experiment_name
        metrics, _ = metrics_for(job, arm)
        data = {f"data_{k}": asset_id(getattr(v, "path", None) or "")
                for k, v in (job.inputs or {}).items()}
        tags = clean_tags({**(job.tags or {}), "pair_id": (job.tags or {}).get("pair_id", pair_id),
                           "arm": arm, "job": job.name, **data, **metrics})
        out.append(ArmModel(
            arm=arm, name=f"{base}-{arm}",
            source=f"azureml://jobs/{job.name}/outputs/{JOB_OUTPUT}/paths/model", tags=tags,
            description=f"The {arm} arm of the paired fine-tuning experiment {tags['pair_id']} "
                        f"(job {job.name})."))
    return out


def check_names(models: list[ArmModel]) -> None:
    """Both models' names are valid before either is registered (an experiment name near the
    limit could fit `-control` and not `-experiment`: half a pair registered)."""
    for m in models:
        if not MODEL_NAME.fullmatch(m.name):
            raise BadPair(f"model name {m.name!r}: at most 255 letters, digits, - _ . starting "
                          "with a letter or digit; choose one with --name")


def register_azure(client, models: list[ArmModel]):
    """Register each arm's model (yields Registered as each is done)."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model
    from azure.core.exceptions import ResourceNotFoundError

    check_names(models)
    for m in models:
        try:
            versions = list(client.models.list(name=m.name))
        except ResourceNotFoundError:
            versions = []
        existing = [v for v in versions if (v.tags or {}).get("pair_id") == m.tags["pair_id"]
                    and (v.tags or {}).get("arm") == m.arm]
        if existing:
            yield Registered(m.arm, m.name, str(existing[0].version), False)
            continue
        model = client.models.create_or_update(Model(
            name=m.name, path=m.source, type=AssetTypes.CUSTOM_MODEL, tags=m.tags,
            description=m.description))
        yield Registered(m.arm, m.name, str(model.version), True)


# ----------------------------------------------------------------------------- local
def local_models(output_dir: Path, pair_id: str, name: str | None,
                 replicate: int | None) -> tuple[list[ArmModel], dict]:
    """Both arms' `model/` folders of a local pair, with the tags of its manifest and metrics;
    raises BadPair (no such pair) or NotFinished. Returns (models, manifest)."""
    from training.local.backend import arm_finished
    from training.experiment.tracking import RUN_ID_FILE

    pair_dir = output_dir / pair_id
    manifest_file = pair_dir / "pair.json"
    parent = re.fullmatch(r"(.+)-r(\d+)", pair_id)
    if (not manifest_file.is_file() and parent and replicate in (None, int(parent[2]))
            and (output_dir / parent[1] / "pair.json").is_file()):
        # a replicate's own id, as `train run` prints it and `train compare` takes it
        return local_models(output_dir, parent[1], name, int(parent[2]))
    if not manifest_file.is_file():
        known = sorted(p.parent.name for p in output_dir.glob("*/pair.json"))[-10:]
        hint = ("pairs there: " + ", ".join(known)) if known else "no pairs there"
        raise BadPair(f"no pair {pair_id!r} in {output_dir} ({hint}); --output-dir names "
                      "the folder `train run` wrote to")
    manifest = json.loads(manifest_file.read_text())
    replicates = sorted(p.name[1:] for p in pair_dir.glob("r[0-9]*") if p.is_dir())
    if replicates:
        by_arm = {arm: [(k, pair_dir / f"r{k}" / arm) for k in replicates] for arm in ARMS}
        chosen = pick_replicate(by_arm, replicate, lambda item: item[0])
    else:
        if replicate not in (None, 0):
            raise BadPair(f"pair {pair_id} has no seed replicates")
        chosen = {arm: (None, pair_dir / arm) for arm in ARMS}
    unfinished = [f"{arm} ({folder})" for arm, (_, folder) in chosen.items()
                  if not arm_finished(folder)]
    if unfinished:
        raise NotFinished(f"not every arm finished: {', '.join(unfinished)} has no final model "
                          "and metrics.json; finish it with `train run` first. Nothing was "
                          "registered.")
    base = name or manifest.get("name") or pair_id
    hashes = manifest.get("data_sha256") or {}
    out = []
    for arm, (k, folder) in chosen.items():
        sub_id = pair_id if k is None else f"{pair_id}-r{k}"
        metrics = json.loads((folder / "metrics.json").read_text())
        run_file = folder / RUN_ID_FILE
        tags = clean_tags({
            "pair_id": sub_id, "arm": arm, "base_model": manifest.get("base_model"),
            "base_model_revision": manifest.get("base_model_revision"),
            "config_sha256": manifest.get("config_sha256"),
            **({"parent_pair_id": pair_id, "replicate": k} if k is not None else {}),
            "data_train_sha256": hashes.get(arm), "data_eval_sha256": hashes.get("eval"),
            **metric_tags({f"final_{k2}": v for k2, v in metrics.items()})})
        out.append(ArmModel(
            arm=arm, name=f"{base}-{arm}", source=str((folder / "model").resolve()), tags=tags,
            description=f"The {arm} arm of the paired fine-tuning experiment {sub_id} "
                        f"({folder.resolve()}).",
            run_id=run_file.read_text().strip() if run_file.is_file() else None,
            local_dir=folder / "model"))
    return out, manifest


def register_mlflow(uri: str, models: list[ArmModel], experiment: str | None):
    """Into the MLflow model registry of `uri` (yields Registered as each is done). A local store
    takes the folder itself as the version's source; a remote one gets the folder as artifacts of
    the arm's run first."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    check_names(models)
    client = MlflowClient(uri, registry_uri=uri)
    remote = uri.split(":", 1)[0] in ("http", "https", "databricks", "azureml")
    for m in models:
        run = find_run(client, m.run_id, m.tags["pair_id"], m.arm, experiment)
        run_id = run.info.run_id if run is not None else None
        try:
            client.create_registered_model(m.name, description="One arm of paired fine-tuning "
                                                               "experiments (tags: pair_id, arm).")
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        existing = [v for v in client.search_model_versions(f"name = '{m.name}'")
                    if v.tags.get("pair_id") == m.tags["pair_id"] and v.tags.get("arm") == m.arm]
        if existing:
            yield Registered(m.arm, m.name, str(existing[0].version), False)
            continue
        source = m.source
        if remote:
            if run_id is None:
                raise NotFinished(f"{m.arm}: no MLflow run of {m.tags['pair_id']} in {uri} to "
                                  "attach the model folder to")
            client.log_artifacts(run_id, str(m.local_dir), "model")
            source = f"{run.info.artifact_uri.rstrip('/')}/model"
        version = client.create_model_version(m.name, source, run_id=run_id, tags=m.tags,
                                              description=m.description)
        yield Registered(m.arm, m.name, str(version.version), True,
                         None if run_id else f"not linked to a run: {uri} holds no MLflow run "
                         f"of {m.tags['pair_id']} {m.arm} (train run tracked it elsewhere?)")
