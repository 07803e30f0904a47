"""The Azure ML backend: submit a pair of jobs, follow it, cancel it (azure-ai-ml `MLClient`).

Submission is atomic and idempotent. Job names are `<pair_id>-<arm>` (with replicates
`<pair_id>-rK-<arm>`), so a pair submitted again is found by name: existing jobs are reported and
nothing is created; a job missing from an earlier attempt that broke in between is created. If a
job cannot be created, every job of the pair created or still running is cancelled, so there is
never half a pair running.

Credentials: `DefaultAzureCredential` (Azure CLI login, managed identity, or the deploy workflow's
OIDC login). No key, token or secret is printed or written.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from training.jobs import CONFIG_FILE, ArmJob, build_command
from training.stack import StackOutputs

TERMINAL = {"Completed", "Failed", "Canceled", "NotResponding"}
FAILED = {"Failed", "Canceled", "NotResponding"}
# What the code snapshot never carries, whatever is next to the package.
AMLIGNORE = """\
# The code snapshot of a pair's jobs: the training package and the resolved experiment file.
__pycache__/
*.pyc
.venv/
runs/
mlruns/
mlflow.db
tests/
.git/
"""


class SubmitError(Exception):
    """A request failed after the checks passed (exit 1); the message says what was undone."""


@dataclass
class JobView:
    """What the CLI shows of one job."""

    name: str
    arm: str
    pair_id: str
    status: str
    studio_url: str | None
    created: str | None = None
    replicate: str | None = None
    experiment: str | None = None


def quiet_sdk() -> None:
    """The SDK logs an "experimental class" notice per schema on import, and identity probes at
    WARNING: noise for users. Set before the import, since the SDK sets its own logger's level."""
    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)
    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.ERROR)


def connect(outputs: StackOutputs, credential=None, transport=None):
    """An MLClient on the stack's workspace. `transport` and `credential` are for tests."""
    quiet_sdk()
    from azure.ai.ml import MLClient

    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    kwargs = {"transport": transport} if transport is not None else {}
    return MLClient(credential, outputs.subscription_id, outputs.resource_group,
                    outputs.workspace_name, **kwargs)


def stage_code(dest: Path, config_yaml: str) -> Path:
    """The code snapshot: the `training` package and the resolved experiment file, nothing else.

    The same content gives the same snapshot hash, so submitting again uploads nothing."""
    import training

    package = Path(training.__file__).resolve().parent
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "training"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / CONFIG_FILE).write_text(config_yaml, encoding="utf-8")
    (dest / ".amlignore").write_text(AMLIGNORE)
    return dest


def snapshot_files(code_dir: Path) -> list[str]:
    """What the SDK would upload from `code_dir`, after its ignore file (relative paths)."""
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_upload_files_from_folder

    files = get_upload_files_from_folder(code_dir, ignore_file=get_ignore_file(code_dir))
    return sorted(rel for _, rel in files)


def _status(job) -> str:
    status = getattr(job, "status", None) or "Unknown"
    return str(getattr(status, "value", status))  # the SDK returns str or a JobStatus enum


def view(job) -> JobView:
    tags = job.tags or {}
    created = None
    if getattr(job, "creation_context", None) is not None:
        created = str(job.creation_context.created_at or "") or None
    return JobView(name=job.name, arm=tags.get("arm", "?"), pair_id=tags.get("pair_id", "?"),
                   status=_status(job), studio_url=getattr(job, "studio_url", None),
                   created=created, replicate=tags.get("replicate"),
                   experiment=getattr(job, "experiment_name", None))


class AzurePair:
    """The jobs of one pair (or of all its replicates) in one workspace."""

    def __init__(self, client):
        self.client = client

    def get(self, name: str):
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.client.jobs.get(name)
        except ResourceNotFoundError:
            return None

    def submit(self, jobs: list[ArmJob], code_dir: Path, on_created=None) -> dict[str, tuple]:
        """Create the jobs that do not exist yet; all or nothing. Returns name -> (job, created)."""

        existing = {j.name: self.get(j.name) for j in jobs}
        dead = {name: _status(job) for name, job in existing.items()
                if job is not None and _status(job) in FAILED}
        missing = [j for j in jobs if existing[j.name] is None]
        if missing and dead:
            # a job name cannot be reused: this pair can no longer be completed as it is
            listed = ", ".join(f"{n} ({s})" for n, s in dead.items())
            raise SubmitError(f"the pair is incomplete and cannot be finished under the same job "
                              f"names: {listed}; `train submit --force` submits it as a new pair")
        result = {name: (job, False) for name, job in existing.items() if job is not None}
        created = []
        for job in missing:
            try:
                submitted = self.client.jobs.create_or_update(build_command(job, str(code_dir)))
            except Exception as e:  # SDK validation errors as well as failed requests
                undone = self._cancel_all([n for n in result if n not in dead])
                what = (f"cancelled {', '.join(undone)}" if undone
                        else "no other job of the pair was running")
                raise SubmitError(
                    f"could not create {job.name}: {_reason(e)}\n  {what}: never half a pair "
                    f"running. Nothing else was changed; fix the cause and submit again "
                    f"(`--force` for a new pair id).") from None
            created.append(job.name)
            result[job.name] = (submitted, True)
            if on_created:
                on_created(submitted)
        return result

    def _cancel_all(self, names: list[str]) -> list[str]:
        done = []
        for name in names:
            try:
                self.client.jobs.begin_cancel(name).result()
                done.append(name)
            except Exception:  # best effort: report what could not be cancelled by omission
                continue
        return done

    def find(self, pair_id: str, limit: int = 500) -> list:
        """The jobs of a pair: by name first (cheap), else by the pair or parent tag."""
        direct = [j for j in (self.get(f"{pair_id}-{arm}") for arm in ("control", "experiment"))
                  if j is not None]
        if direct:
            return direct
        jobs = []
        for job in self.client.jobs.list(max_results=limit):
            if job is None:
                continue
            tags = job.tags or {}
            if pair_id in (tags.get("pair_id"), tags.get("parent_pair_id")):
                jobs.append(job)
        return sorted(jobs, key=lambda j: j.name)

    def recent_pairs(self, limit: int = 500) -> dict[str, list[JobView]]:
        """Pair id (the parent id for replicates) -> its jobs, newest pair first."""
        pairs: dict[str, list[JobView]] = {}
        for job in self.client.jobs.list(max_results=limit):
            if job is None or not (job.tags or {}).get("pair_id"):
                continue
            tags = job.tags
            pairs.setdefault(tags.get("parent_pair_id") or tags["pair_id"], []).append(view(job))
        return dict(sorted(pairs.items(), key=lambda kv: max(v.created or "" for v in kv[1]),
                           reverse=True))

    def cancel(self, jobs: list) -> list[tuple[str, str]]:
        """Cancel every job of the pair that has not ended; (name, what happened) each."""
        out = []
        for job in jobs:
            status = _status(job)
            if status in TERMINAL:
                out.append((job.name, f"already {status}"))
                continue
            try:
                self.client.jobs.begin_cancel(job.name).result()
                out.append((job.name, "cancel requested"))
            except Exception as e:
                out.append((job.name, f"could not cancel: {_reason(e)}"))
        return out

    def wait(self, names: list[str], on_update, poll_seconds: float = 30.0,
             sleep=time.sleep) -> dict[str, str]:
        """Poll until every job has ended; on_update(name -> status) after each poll."""
        while True:
            statuses = {name: _status(self.client.jobs.get(name)) for name in names}
            on_update(statuses)
            if all(s in TERMINAL for s in statuses.values()):
                return statuses
            sleep(poll_seconds)

    def stream(self, name: str) -> None:
        """Print the job's rank-0 log until it ends (the SDK raises if the job failed)."""
        self.client.jobs.stream(name)


def _reason(e: Exception) -> str:
    message = getattr(e, "message", None) or str(e) or type(e).__name__
    return message.strip().splitlines()[0][:300]
