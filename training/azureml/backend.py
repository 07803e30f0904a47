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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.azureml.jobs import ArmJob, build_command
from training.errors import TrainError
from training.experiment.stack import StackOutputs
from training.terminal import printable

TERMINAL = {"Completed", "Failed", "Canceled", "NotResponding"}
FAILED = {"Failed", "Canceled", "NotResponding"}


class SubmitError(TrainError):
    """A request failed after the checks passed (exit 1); the message says what was undone.
    `bad_input`: the pair as asked conflicts with what exists (exit 2); `interrupted`: Ctrl-C."""

    def __init__(self, message: str, bad_input: bool = False, interrupted: bool = False):
        super().__init__(message)
        self.bad_input, self.interrupted = bad_input, interrupted

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else 2 if self.bad_input else 1


@dataclass
class JobView:
    """What the CLI shows of one job."""

    name: str
    arm: str
    pair_id: str
    status: str
    studio_url: str | None
    created: str | None = None
    replicate: int | None = None
    experiment: str | None = None


def quiet_sdk() -> None:
    """The SDK logs an "experimental class" notice per schema on import, and identity probes at
    WARNING: noise for users. Set before the import, since the SDK sets its own logger's level."""
    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)
    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.ERROR)


def default_credential():
    """The caller's Azure identity: `az login`, a managed identity, or the environment's."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def connect(outputs: StackOutputs, credential=None, transport=None):
    """An MLClient on the stack's workspace. `transport` and `credential` are for tests."""
    quiet_sdk()
    from azure.ai.ml import MLClient

    credential = credential or default_credential()
    kwargs = {"transport": transport} if transport is not None else {}
    return MLClient(credential, outputs.subscription_id, outputs.resource_group,
                    outputs.workspace_name, **kwargs)




def _replicate(tag) -> int | None:
    """The `replicate` tag (a string, as every tag) as a number; None when absent or not one."""
    return int(tag) if isinstance(tag, str) and tag.isdigit() else None


def job_status(job) -> str:
    status = getattr(job, "status", None) or "Unknown"
    return str(getattr(status, "value", status))  # the SDK returns str or a JobStatus enum


def view(job) -> JobView:
    """What the CLI shows of a job, every string printable (training.terminal)."""
    tags = job.tags or {}
    created = None
    if getattr(job, "creation_context", None) is not None:
        created = str(job.creation_context.created_at or "") or None
    return JobView(name=printable(job.name), arm=printable(tags.get("arm", "?")),
                   pair_id=printable(tags.get("pair_id", "?")), status=printable(job_status(job)),
                   studio_url=printable(getattr(job, "studio_url", None)),
                   created=printable(created), replicate=_replicate(tags.get("replicate")),
                   experiment=printable(getattr(job, "experiment_name", None)))


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

    def submit(self, jobs: list[ArmJob], code_dir: Path,
               before_create: Callable[[], None] | None = None) -> dict[str, tuple]:
        """Create the jobs that do not exist yet; all or nothing. Returns name -> (job, created).

        An existing job counts only if its tags say it is this pair's (same pair id, arm, config,
        seed, base model revision): a reused --pair-id or a sweep of the same name is refused.
        `before_create` (the budget check) runs once the lookups show a job is to be created."""
        from training.azureml.jobs import identity_mismatch

        existing = {j.name: self.get(j.name) for j in jobs}
        completing = any(found is None for found in existing.values())
        for job in jobs:
            found = existing[job.name]
            if found is not None and (diff := identity_mismatch(job, recorded_tags(found))):
                raise SubmitError(f"a job named {job.name} exists but is not this pair's: "
                                  + "; ".join(diff) + ". Choose another --pair-id, or drop "
                                  "--pair-id to derive one from the config", bad_input=True)
            if found is not None and completing and (
                    diff := identity_mismatch(job, recorded_tags(found), completing=True)):
                raise SubmitError(f"{job.name} ran with other settings than the jobs this "
                                  "submission would add to its pair: " + "; ".join(diff)
                                  + ". The arms would not be comparable: submit with the "
                                  "settings it ran with, or `--force` for a new pair",
                                  bad_input=True)
        dead = {name: job_status(job) for name, job in existing.items()
                if job is not None and job_status(job) in FAILED}
        missing = [j for j in jobs if existing[j.name] is None]
        if missing and dead:
            # a job name cannot be reused: this pair can no longer be completed as it is
            listed = ", ".join(f"{n} ({s})" for n, s in dead.items())
            raise SubmitError(f"the pair is incomplete and cannot be finished under the same job "
                              f"names: {listed}; `train submit --force` submits it as a new pair")
        if missing and before_create is not None:
            before_create()
        result = {name: (job, False) for name, job in existing.items() if job is not None}
        current = None
        try:
            for job in missing:
                current = job.name
                try:
                    submitted = self.client.jobs.create_or_update(
                        build_command(job, str(code_dir)))
                except Exception as e:
                    # a 409: another submission of this pair created it first. If it is this
                    # pair's job, the pair goes on with it (nothing to undo); if not, refuse.
                    other = self.get(job.name) if getattr(e, "status_code", None) == 409 else None
                    if other is None:
                        raise
                    if diff := identity_mismatch(job, other.tags or {}, completing=True):
                        raise RuntimeError(f"it was created meanwhile, not as this pair's: "
                                           f"{'; '.join(diff)}") from None
                    result[job.name] = (other, False)
                    continue
                result[job.name] = (submitted, True)
            return result
        except (KeyboardInterrupt, Exception) as e:  # SDK validation errors, failed requests
            # the request in flight may have created its job (a Ctrl-C, or a response lost to a
            # timeout or a reset after the service got it): look, then undo everything
            unknown = None
            if current and current not in result:
                try:
                    if self.get(current) is not None:
                        result[current] = (None, True)
                except (Exception, KeyboardInterrupt):  # no answer, or a second Ctrl-C
                    unknown = current
            interrupted = isinstance(e, KeyboardInterrupt)
            ended = {n for n, (job, new) in result.items()
                     if not new and job_status(job) in TERMINAL}  # nothing to cancel there
            what = "interrupted" if interrupted else f"could not create {current}: {failure_reason(e)}"
            self._undo([n for n in result if n not in dead and n not in ended], what,
                       interrupted=interrupted, unknown=unknown)

    def _undo(self, names: list[str], what: str, interrupted: bool = False,
              unknown: str | None = None):
        """Cancel the jobs of a pair that could not be completed, and say exactly what happened
        (`unknown`: a job that may have been created, which the service could not confirm)."""
        if unknown:
            names = [*names, unknown]
        cancelled, failed = self._cancel_all(names)
        lines = [what]
        if cancelled:
            lines.append(f"cancelled {', '.join(cancelled)}")
        unsure = unknown is not None and unknown in failed
        if unsure:
            failed.remove(unknown)
            lines.append(f"{unknown} MAY HAVE BEEN CREATED (the service did not answer): check "
                         "with `train status PAIR` and cancel it with `train cancel PAIR`")
        if failed:
            lines.append(f"COULD NOT CANCEL {', '.join(failed)}: it is still running; cancel it "
                         "with `train cancel PAIR` or in the studio")
        elif unsure:
            pass
        elif cancelled:
            lines.append("never half a pair running")
        else:
            lines.append("this submission created no job (nothing to cancel)")
        lines.append("fix the cause and submit again with `--force` (a new pair id: a cancelled "
                     "job keeps its name)" if cancelled or failed
                     else "fix the cause and submit again")
        raise SubmitError("\n  ".join(lines), interrupted=interrupted)

    def _cancel_all(self, names: list[str]) -> tuple[list[str], list[str]]:
        done, failed = [], []
        for name in names:
            try:
                self.client.jobs.begin_cancel(name).result()
                done.append(name)
            except (Exception, KeyboardInterrupt):  # a second Ctrl-C: name it as not cancelled
                failed.append(name)
        return done, failed

    def find(self, pair_id: str, limit: int = 500) -> list:
        """Every job of a pair: its arms by name, and its replicates by tag (a pair submitted
        with and without replicates has both). A job whose tags name another pair (a sweep) is
        not the pair's."""
        jobs = {}
        for arm in ("control", "experiment"):
            job = self.get(f"{pair_id}-{arm}")
            if job is not None and (job.tags or {}).get("pair_id") == pair_id:
                jobs[job.name] = job
        for job in self.client.jobs.list(max_results=limit):
            tags = (job.tags or {}) if job is not None else {}
            if job is not None and not tags.get("sweep_of") and pair_id in (
                    tags.get("pair_id"), tags.get("parent_pair_id")):
                jobs.setdefault(job.name, job)
        return [jobs[name] for name in sorted(jobs)]

    def recent_pairs(self, limit: int = 500) -> dict[str, list[JobView]]:
        """Pair id (the parent id for replicates) -> its jobs, newest pair first (sweeps are not
        pairs)."""
        pairs: dict[str, list[JobView]] = {}
        for job in self.client.jobs.list(max_results=limit):
            tags = (job.tags or {}) if job is not None else {}
            if job is None or not tags.get("pair_id") or tags.get("sweep_of"):
                continue
            pairs.setdefault(printable(tags.get("parent_pair_id") or tags["pair_id"]),
                             []).append(view(job))
        return dict(sorted(pairs.items(), key=lambda kv: max(v.created or "" for v in kv[1]),
                           reverse=True))

    def cancel(self, jobs: list) -> list[tuple[str, str]]:
        """Cancel every job of the pair that has not ended; (name, what happened) each, printable."""
        out = []
        for job in jobs:
            status = job_status(job)
            if status in TERMINAL:
                out.append((printable(job.name), f"already {printable(status)}"))
                continue
            try:
                self.client.jobs.begin_cancel(job.name).result()
                out.append((printable(job.name), "cancel requested"))
            except Exception as e:
                out.append((printable(job.name), f"could not cancel: {printable(failure_reason(e))}"))
        return out

    def wait(self, names: list[str], on_update, poll_seconds: float = 30.0,
             sleep=time.sleep, give_up_after: float = 600.0) -> dict[str, str]:
        """Poll until every job has ended; on_update(name -> status) after each poll. A poll
        that fails for a passing reason (a 5xx, a 429, a dropped connection) is tried again
        until `give_up_after` seconds of failures in a row (a following CI job must not fail on
        a hiccup of the service)."""
        failing_since = None
        while True:
            try:
                statuses = {name: job_status(self.client.jobs.get(name)) for name in names}
            except Exception as e:
                if not _transient(e):
                    raise
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > give_up_after:
                    raise
                sleep(max(poll_seconds, 1.0))
                continue
            failing_since = None
            on_update(statuses)
            if all(s in TERMINAL for s in statuses.values()):
                return statuses
            sleep(poll_seconds)

    def stream(self, name: str) -> None:
        """Print the job's rank-0 log until it ends (the SDK raises if the job failed). The SDK
        prints log lines only while a job runs: for one that has ended, its log is printed first."""
        job = self.get(name)
        if job is not None and job_status(job) in TERMINAL:
            self.print_ended_log(name)
        self.client.jobs.stream(name)

    def print_ended_log(self, name: str) -> None:
        """The rank-0 log of an ended job, found and read as the SDK's own stream finds it (the
        job's default output folder, else the run's log files)."""
        import sys

        from azure.ai.ml._artifacts._artifact_utilities import (
            get_datastore_info,
            list_logs_in_datastore,
        )
        from azure.ai.ml._utils.utils import create_requests_pipeline_with_retry
        from azure.ai.ml.operations._job_ops_helper import _get_sorted_filtered_logs

        ops = self.client.jobs
        rest = ops._get_job(name)
        default = (rest.properties.outputs or {}).get("default") if getattr(
            rest.properties, "outputs", None) else None
        logs = None
        if default is not None and getattr(default, "uri", None) and "datastores/" in default.uri:
            store, prefix = default.uri.split("datastores/")[1].split("/", 1)
            logs = list_logs_in_datastore(get_datastore_info(ops._datastore_operations, store),
                                          prefix=prefix, legacy_log_folder_name="/azureml-logs/")
        if not logs:
            logs = ops._runs_operations.get_run_details(name).log_files or {}
        pipeline = create_requests_pipeline_with_retry(requests_pipeline=ops._requests_pipeline)
        files = _get_sorted_filtered_logs(logs, rest.properties.job_type, {})
        if not files:
            print(f"({name} recorded no log file)", file=sys.stderr)
        for log in files:
            response = pipeline.get(logs[log], read_timeout=60, connection_timeout=60)
            if response.status_code != 200:  # the SDK's helper returns an error body as text
                print(f"warning: could not read {log} (HTTP {response.status_code}"
                      + (": its link has expired" if response.status_code == 403 else "")
                      + "); the studio shows it", file=sys.stderr)
                continue
            sys.stdout.write(response.text())
            sys.stdout.write("\n")


def recorded_tags(job) -> dict:
    """A job's tags, with the data asset versions read from its inputs where the tags lack them
    (jobs submitted before the train_data/eval_data tags)."""
    from training.azureml.jobs import asset_id

    tags = dict(job.tags or {})
    inputs = job.inputs or {}
    for tag, name in (("train_data", "train"), ("eval_data", "eval")):
        if tag not in tags and hasattr(inputs.get(name), "path"):
            value = asset_id(inputs[name].path or "")
            if not value.startswith("azureml:") and "/" not in value:  # the SDK drops the prefix
                value = f"azureml:{value}"
            tags[tag] = value
    if "train_data" in tags and "eval_data" not in tags and "eval" not in inputs:
        tags["eval_data"] = ""
    return tags


def _transient(e: Exception) -> bool:
    """A failure that another try may not have: no answer, a 5xx, or a 429."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    if isinstance(e, ServiceRequestError | ServiceResponseError):
        return True
    status = getattr(e, "status_code", None)
    return isinstance(e, HttpResponseError) and status is not None and (
        status >= 500 or status == 429)


def failure_reason(e: Exception) -> str:
    from training.experiment.tracking import redacted

    message = getattr(e, "message", None) or str(e) or type(e).__name__
    return redacted(message.strip().splitlines()[0])[:300]  # a log's SAS URL: not printed
