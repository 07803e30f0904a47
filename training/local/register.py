"""`train register` of a local pair: each arm's `model/` folder into the MLflow model registry of
the tracking store, tagged with the pair (training.experiment.registry)."""

from __future__ import annotations

import json
from pathlib import Path

from training.experiment.config import ARMS
from training.experiment.pair import replicate_id, split_replicate_id
from training.experiment.registry import (
    ArmModel,
    BadPair,
    NotFinished,
    Registered,
    check_names,
    clean_tags,
    find_run,
    metric_tags,
    pick_replicate,
)
from training.experiment.tracking import RUN_ID_FILE
from training.local.backend import arm_finished


def _json_object(path: Path, what: str) -> dict:
    """A JSON object that `train run` wrote; a file edited or cut short since is bad input."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BadPair(f"{path}: {what} cannot be read ({e}); run `train run` for the pair "
                      "again to write it anew") from None
    if not isinstance(data, dict):
        raise BadPair(f"{path}: {what} is not a JSON object; run `train run` for the pair again "
                      "to write it anew")
    return data


def local_models(output_dir: Path, pair_id: str, name: str | None,
                 replicate: int | None) -> tuple[list[ArmModel], dict]:
    """Both arms' `model/` folders of a local pair, with the tags of its manifest and metrics;
    raises BadPair (no such pair) or NotFinished. Returns (models, manifest)."""
    pair_dir = output_dir / pair_id
    manifest_file = pair_dir / "pair.json"
    parent = split_replicate_id(pair_id)
    if (not manifest_file.is_file() and parent and replicate in (None, parent[1])
            and (output_dir / parent[0] / "pair.json").is_file()):
        # a replicate's own id, as `train run` prints it and `train compare` takes it
        return local_models(output_dir, parent[0], name, parent[1])
    if not manifest_file.is_file():
        known = sorted(p.parent.name for p in output_dir.glob("*/pair.json"))[-10:]
        hint = ("pairs there: " + ", ".join(known)) if known else "no pairs there"
        raise BadPair(f"no pair {pair_id!r} in {output_dir} ({hint}); --output-dir names "
                      "the folder `train run` wrote to")
    manifest = _json_object(manifest_file, "the pair's manifest")
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
        sub_id = pair_id if k is None else replicate_id(pair_id, k)
        metrics = _json_object(folder / "metrics.json", f"the {arm} arm's final metrics")
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
