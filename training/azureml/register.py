"""`train register` on Azure ML: each arm's model is a reference to its job's output
(`azureml://jobs/<job>/outputs/arm_dir/paths/model`, nothing copied) in the workspace's model
registry, tagged with the pair (training.experiment.registry)."""

from __future__ import annotations

from training.azureml.backend import job_status
from training.azureml.jobs import asset_id
from training.experiment.registry import (
    ArmModel,
    NotFinished,
    Registered,
    check_names,
    clean_tags,
    pick_replicate,
)

JOB_OUTPUT = "arm_dir"  # the jobs' output folder (training.azureml.jobs); the model is its `model/`


def azure_models(jobs: list, pair_id: str, name: str | None, replicate: int | None,
                 metrics_for) -> list[ArmModel]:
    """Both arms' models from the pair's jobs; raises NotFinished if one did not complete.
    `metrics_for(job, arm) -> (tags, note)`."""
    by_arm: dict[str, list] = {}
    for job in jobs:
        by_arm.setdefault((job.tags or {}).get("arm"), []).append(job)
    chosen = pick_replicate(by_arm, replicate, lambda j: (j.tags or {}).get("replicate"))
    unfinished = {arm: (job.name, job_status(job)) for arm, job in chosen.items()
                  if job_status(job) != "Completed"}
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
