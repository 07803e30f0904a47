"""The hosted backend's results: each finished job's per-step metrics (its result file) written
into MLflow as a run tagged `pair_id`/`arm`, like the other backends' runs, so `train compare`
reads a hosted pair unchanged. Re-exported by `training.backends.openai`.
"""

from __future__ import annotations

import time

from training.hosted import service as hosted

# job metadata -> the MLflow param names of the recipe's runs
METADATA_PARAMS = {"data_sha256": "data.train_sha256", "data_rows": "data.train_rows",
                   "eval_sha256": "data.eval_sha256", "eval_rows": "data.eval_rows"}


def job_steps(client, job: dict) -> list[tuple[int, dict[str, float]]]:
    """Per-step metrics of a finished job: its result file(s), plus each checkpoint's full
    validation loss where the result file lacks it."""
    steps: dict[int, dict[str, float]] = {}
    for file_id in job.get("result_files") or []:
        for step, metrics in hosted.parse_results(client.files.content(file_id).read()):
            steps.setdefault(step, {}).update(metrics)
    if not any("eval_loss" in m for m in steps.values()):
        for cp in client.fine_tuning.jobs.checkpoints.list(job["id"]):
            m = cp.metrics
            extra = {"eval_loss": m.full_valid_loss, "eval_token_accuracy":
                     m.full_valid_mean_token_accuracy}
            steps.setdefault(cp.step_number, {}).update(
                {k: v for k, v in extra.items() if v is not None})
    return sorted(steps.items())


def log_pair(client, pair_id: str, jobs: dict[str, dict], tracking_uri: str) -> dict[str, str]:
    """One MLflow run per finished arm (succeeded or failed), tagged pair_id/arm like the other
    backends' runs; a job already logged is not logged again. Returns {arm: run id}."""
    import mlflow
    from mlflow.entities import Metric

    from training.experiment.tracking import flatten

    mlflow.set_tracking_uri(tracking_uri)
    ml = mlflow.MlflowClient(tracking_uri)
    runs = {}
    for arm, job in jobs.items():
        if job["status"] not in ("succeeded", "failed"):
            continue
        meta = job.get("metadata") or {}
        name = meta.get("experiment") or "paired-finetune"
        experiment = ml.get_experiment_by_name(name)
        exp_id = experiment.experiment_id if experiment else ml.create_experiment(name)
        done = ml.search_runs([exp_id], f"tags.openai_job_id = '{job['id']}'")
        if done:
            runs[arm] = done[0].info.run_id
            continue
        hyper = job.get("hyperparameters") or {}
        # named as the recipe names them, so `train compare` checks the same fairness rules
        params = {"backend": "openai", "base_model": job["model"], "training.seed": job.get("seed"),
                  "pair_id": pair_id, "arm": arm, "train_file": job.get("training_file"),
                  "validation_file": job.get("validation_file"), **flatten(hyper, "openai."),
                  **{METADATA_PARAMS.get(k, k): v for k, v in meta.items()
                     if k not in ("pair_id", "arm", "experiment")}}
        tags = {"pair_id": pair_id, "arm": arm, "backend": "openai", "base_model": job["model"],
                "openai_job_id": job["id"], "fine_tuned_model": job.get("fine_tuned_model") or "",
                "per_example_losses": "false", "job_status": job["status"]}
        if job.get("error") and job["error"].get("message"):
            tags["error"] = job["error"]["message"][:5000]
        steps = job_steps(client, job) if job["status"] == "succeeded" else []
        final = hosted.final_metrics(steps)
        if job.get("trained_tokens"):
            final["final_tokens_seen"] = float(job["trained_tokens"])
        last = int(final.get("final_global_step", 0))
        run = ml.create_run(exp_id, run_name=f"{pair_id}-{arm}", tags=tags)
        rid = run.info.run_id
        ml.log_batch(rid, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()
                                  if v is not None])
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for step, m in steps for k, v in m.items()]
        metrics += [Metric(k, v, now, last) for k, v in final.items()]
        for i in range(0, len(metrics), 1000):
            ml.log_batch(rid, metrics=metrics[i:i + 1000])
        ml.set_terminated(rid, "FINISHED" if job["status"] == "succeeded" else "FAILED")
        runs[arm] = rid
    return runs
