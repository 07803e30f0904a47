"""MLflow tracking of one arm: the run, its tags and params, resumed across restarts.

The recipe opens the run itself on rank 0 (HF's MLflow callback would end it when training ends and
a later evaluate() would open a stray one), and remembers its id in the arm's folder so a resumed arm
continues the same run. Inside an Azure ML job, MLflow's own environment (MLFLOW_RUN_ID) wins.
"""

from __future__ import annotations

import math
import os
import re
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


_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")
# a SAS token's signature and the usual token parameters of a URL's query
_QUERY_SECRET = re.compile(r"(?<=[?&])(sig|se|skoid|sktid|token|access_token|code|api-key|key)"
                           r"=[^&\s'\")]+", re.IGNORECASE)


def redacted(text: str) -> str:
    """`text` with the user:password of every URL in it removed (a tracking URI may carry them;
    MLflow's errors repeat the URL), and a query's signature or token (a log's SAS URL), for
    anything printed."""
    return _QUERY_SECRET.sub(lambda m: f"{m.group(1)}=***", _USERINFO.sub("", text))


def store_name(uri: str) -> str:
    """The store `uri` names, for recording and comparing: a sqlite file by its absolute path (a
    relative one depends on the folder `train run` starts in), anything else without its
    user:password."""
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return redacted(uri)


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
    remembered = id_file.read_text().strip() if id_file.exists() else None
    # Inside an Azure ML job the run is the job's (MLFLOW_RUN_ID): never a second or nested one.
    job_run = os.environ.get("MLFLOW_RUN_ID")
    run_id = job_run or remembered
    if run_id is None:
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_id=run_id, run_name=run_name, log_system_metrics=True) as run:
        _logged.clear()
        if remembered != run.info.run_id:  # a new run (a job restarted keeps its run and folder)
            id_file.write_text(run.info.run_id)
            mlflow.set_tags(tags)
            log_params(params)
        else:
            _logged.update(last_logged_steps(run.info.run_id))
        yield run


# metric -> the last step the run already has: a resumed arm replays the steps between its
# checkpoint and the interruption, and must not log them a second time.
_logged: dict[str, int] = {}


def last_logged_steps(run_id: str) -> dict[str, int]:
    import mlflow

    client = mlflow.MlflowClient()
    last = {}
    for key in client.get_run(run_id).data.metrics:
        if not key.startswith("system/"):
            last[key] = max((m.step for m in client.get_metric_history(run_id, key)), default=-1)
    return last


def end_run(status: str) -> None:
    import mlflow

    mlflow.end_run(status)


def close_stale_run(arm_dir: Path, uri: str, status: str) -> str | None:
    """Mark the arm's MLflow run `status` (FAILED, KILLED) if it is still RUNNING: an arm killed
    hard cannot end its own run. Returns the run id it ended, else None."""
    id_file = arm_dir / RUN_ID_FILE
    if not id_file.exists():
        return None
    import mlflow

    client = mlflow.MlflowClient(uri)
    run_id = id_file.read_text().strip()
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return None
        client.set_terminated(run_id, status)
    except Exception:  # the store is gone or the id is stale: nothing to close
        return None
    return run_id


MAX_PARAMS_PER_CALL = 100  # MLflow refuses more than 200 params in one call


def log_params(params: dict) -> None:
    """Log params in batches, never re-logging a key the run already has (an Azure ML job logs
    its inputs as params; logging such a key again with another value fails): a conflicting key
    is logged as `recipe.<key>` instead."""
    import mlflow

    run_id = mlflow.active_run().info.run_id
    existing = mlflow.MlflowClient().get_run(run_id).data.params
    todo = {}
    for key, value in params.items():
        value = str(value)[:6000]  # MLflow's limit on a param's value
        if key in existing:
            if existing[key] == value:
                continue
            key = f"recipe.{key}"
            if key in existing:
                continue
        todo[key] = value
    items = list(todo.items())
    for i in range(0, len(items), MAX_PARAMS_PER_CALL):
        mlflow.log_params(dict(items[i:i + MAX_PARAMS_PER_CALL]))


def log_metrics(metrics: dict, step: int) -> None:
    import mlflow

    clean = {k: float(v) for k, v in metrics.items()
             if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
             and step > _logged.get(k, -1)}
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_artifacts(*paths: Path) -> None:
    import mlflow

    for path in paths:
        mlflow.log_artifact(str(path))


def ensure_experiment(uri: str, name: str) -> None:
    """Create the MLflow experiment here, once: two arms creating it at once would race."""
    if os.environ.get("MLFLOW_RUN_ID"):
        return
    if uri.startswith("sqlite:///"):  # MLflow retries an unopenable file for two minutes
        import sqlite3

        from training.experiment.paths import dir_problem

        path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).absolute()
        if problem := dir_problem(path.parent, may_be_missing=False):
            raise ValueError(f"the sqlite file's folder {path.parent}: {problem}")
        try:
            sqlite3.connect(path, timeout=5).close()  # creates it as MLflow would
        except sqlite3.Error as e:
            raise ValueError(f"cannot open {path} as an sqlite database ({e})") from None
    import mlflow

    mlflow.set_tracking_uri(uri)
    # a store that is down fails this check in seconds, not after minutes of retries (the arms
    # keep MLflow's own retries)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                            "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        try:
            if mlflow.get_experiment_by_name(name) is None:
                mlflow.create_experiment(name)
        except Exception as e:  # another `train run` creating the same new store this moment
            if "already exists" not in str(e):
                raise
            import time

            time.sleep(2)
            if mlflow.get_experiment_by_name(name) is None:
                mlflow.create_experiment(name)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ----------------------------------------------------------------------------- what each field is
SETTING, DATA, RESULT, IDENTITY = "setting", "data fact", "result", "identity"
CLASSES = (SETTING, DATA, RESULT, IDENTITY)
# Every field an arm's run carries, by kind (param, tag, metric) and name: the one table `train
# compare` judges a pair by. A name ending in "." stands for every field under it, "*" for every
# field of its kind. A setting must be equal in both arms (replicates: all but the seed); a data
# fact is derived from an arm's own data and is shown side by side; a result is measured; the
# identity names the run. A param missing here is compared as a setting (and fails a test).
FIELDS: dict[tuple[str, str], str] = {
    # the experiment file, one for both arms (arms, eval and sweep are not logged)
    **{("param", k): SETTING for k in (
        "name", "base_model", "base_model_revision", "backend", "method", "lora.", "training.",
        "success.", "budget_usd", "openai.", "azure.")},
    # the arm's own training data (recipe.arm_data; the hosted job's metadata; Azure ML inputs)
    **{("param", k): DATA for k in (
        "data.train_sha256", "data.train_rows", "data.train_too_long", "data.eval_too_long",
        "train_file", "data.train_file", "train_data")},
    # the eval set: the same file for both arms when it is shared (data.eval: the holdout rule)
    **{("param", k): SETTING for k in (
        "data.eval", "data.eval_sha256", "data.eval_rows", "validation_file", "created_by")},
    # the recipe's own (recipe.train.run_record)
    ("param", "arm"): IDENTITY, ("param", "pair_id"): IDENTITY,
    **{("param", k): SETTING for k in (
        "config_sha256", "code_version", "precision", "world_size", "sharding_resolved",
        "trainable_params", "base_model_path")},
    # tags: the recipe's, an Azure ML job's, a hosted job's, MLflow's own
    **{("tag", k): IDENTITY for k in (
        "pair_id", "arm", "replicate", "parent_pair_id", "openai_job_id", "mlflow.")},
    **{("tag", k): SETTING for k in (
        "base_model", "method", "base_model_revision", "code_version", "config_sha256", "seed",
        "eval_data", "compute", "environment", "resources", "backend")},
    ("tag", "train_data"): DATA,
    **{("tag", k): RESULT for k in (
        "fine_tuned_model", "per_example_losses", "job_status", "error")},
    # metrics are measured: losses, rates, final_*, system/*, cost_usd
    ("metric", "*"): RESULT,
}


def field_class(name: str, kind: str = "param") -> str | None:
    """The class of a logged field (SETTING, DATA, RESULT, IDENTITY), None when FIELDS lacks it.
    `recipe.<key>`: a key an Azure ML job had logged first with another value (log_params)."""
    if kind == "param" and name.startswith("recipe."):
        name = name.removeprefix("recipe.")
    if (kind, name) in FIELDS:
        return FIELDS[(kind, name)]
    # "lora." stands for lora.r, ... and for "lora" itself (an unset section, logged as None)
    prefixes = [k for kd, k in FIELDS
                if kd == kind and k.endswith(".") and (name + ".").startswith(k)]
    if prefixes:
        return FIELDS[(kind, max(prefixes, key=len))]
    return FIELDS.get((kind, "*"))
