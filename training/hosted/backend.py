"""The hosted backend: a pair of fine-tuning jobs on OpenAI or Azure OpenAI.

`prepare` validates both arms' data against the service's chat format and limits (nothing is sent
before); `submit_pair` uploads the two training files and the shared eval file, then creates the two
jobs with the same model, hyperparameters and seed. It is atomic (if the second job cannot be
created the first is cancelled) and idempotent (the same pair id finds its jobs by their metadata
and creates and uploads nothing). `wait_pair` polls with backoff, prints new job events and honours
429 `retry-after`; `log_pair` writes each finished job's per-step metrics into MLflow as a run
tagged `pair_id`/`arm`, like the other backends' runs, so `train compare` reads them unchanged.

No key is ever printed, logged or written: keys stay in the environment and the client.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from training.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED
from training.experiment.config import ARMS, ExperimentConfig
from training.hosted import service as hosted

# the client, its credentials and errors: their own module, re-exported here (one interface)
from training.hosted.client import (  # noqa: F401
    DEFAULT_AZURE_API_VERSION,
    HostedError,
    describe_error,
    make_client,
    retry_after,
)

# the finished jobs' metrics into MLflow: their own module, re-exported here (one interface)
from training.hosted.results import job_steps, log_pair

TERMINAL = ("succeeded", "failed", "cancelled")


def hyperparameters(cfg: ExperimentConfig) -> dict:
    """What the pair trains with on the service: the same for both arms."""
    return {k: getattr(cfg.openai, k) for k in ("n_epochs", "batch_size",
                                                "learning_rate_multiplier")}


def dry_run_requests(cfg: ExperimentConfig, prep) -> dict[str, dict]:
    """Each arm's job request as it would be sent, the uploads' ids named by their files."""
    return {arm: hosted.job_request(
        model=cfg.base_model, seed=cfg.training.seed, hyperparameters=hyperparameters(cfg),
        pair_id=prep.pair_id, arm=arm, training_file=f"<upload of {prep.files[arm]}>",
        validation_file=cfg.eval and f"<upload of {cfg.eval}>", metadata=prep.metadata(arm))
        for arm in ARMS}


# ---------------------------------------------------------------------------------------- prepare
@dataclass
class Prepared:
    """A validated pair, ready to submit: nothing has been sent yet."""

    cfg: ExperimentConfig
    pair_id: str
    files: dict[str, Path]  # control, experiment[, eval]
    report: hosted.HostedReport
    warnings: list[str] = field(default_factory=list)

    def metadata(self, arm: str) -> dict[str, str]:
        from training.experiment.tracking import code_version

        f = self.report.files
        meta = {"experiment": self.cfg.name, "config_sha256": self.cfg.sha256(),
                "data_sha256": f[arm].sha256, "data_rows": str(f[arm].rows),
                "code_version": code_version()}
        if "eval" in f:
            meta["eval_sha256"], meta["eval_rows"] = f["eval"].sha256, str(f["eval"].rows)
        return meta


def prepare(cfg: ExperimentConfig, count: Callable[[str], int] | None = None,
            pair_id: str | None = None) -> Prepared:
    """Validate the pair's data for the service. `count` counts tokens (default: tiktoken for the
    model, else an estimate). Raises HostedError(exit 2) listing every problem."""
    from training.experiment.pair import derive_pair_id

    if getattr(cfg.training, "replicates", 1) > 1:
        raise HostedError("training.replicates: seed replicates are not supported on hosted "
                          "backends (set it to 1)", EXIT_BAD_INPUT)
    try:
        limit = hosted.example_token_limit(cfg.base_model, cfg.openai.example_token_limit)
    except hosted.HostedInputError as e:
        raise HostedError(str(e), EXIT_BAD_INPUT) from None
    files = {arm: cfg.train_file(arm) for arm in ARMS}
    if cfg.eval:
        files["eval"] = cfg.eval
    missing = [f"{name}: {path}" for name, path in files.items() if not Path(path).is_file()]
    if missing:
        raise HostedError("data file not found:\n  " + "\n  ".join(missing), EXIT_BAD_INPUT)
    report = hosted.validate_pair_files(files, limit,
                                        count or hosted.tiktoken_encoder(cfg.base_model))
    if not report.ok:
        raise HostedError("the data is not valid for the service: nothing was uploaded\n  "
                          + "\n  ".join(report.problems[:50]), EXIT_BAD_INPUT)
    warnings = list(report.warnings)
    if not cfg.eval:
        warnings.append("no shared eval set (`eval:`): the jobs get no validation file, so the "
                        "pair is compared on training loss only")
    o = cfg.openai
    sizes = {report.files[a].rows for a in ARMS}
    autos = [k for k in ("n_epochs", "batch_size", "learning_rate_multiplier")
             if getattr(o, k) == "auto"]
    if autos and len(sizes) > 1:
        warnings.append(f"{', '.join(autos)}: auto is resolved by the service from each file's "
                        "size, so arms of different sizes may train with different values; set "
                        "them in the openai: section for a strictly identical pair")
    hashes = {name: f.sha256 for name, f in report.files.items()}
    # the service's hyperparameters train the weights too (cfg.sha256 leaves the openai: section out)
    identity = {**hashes, "hosted": json.dumps(hosted_identity(cfg), sort_keys=True)}
    return Prepared(cfg, pair_id or derive_pair_id(cfg.name, cfg.sha256(), sorted(identity.items())), files, report, warnings)


def hosted_identity(cfg: ExperimentConfig) -> dict:
    """What a hosted job trains with beyond `cfg.sha256()`: the service and its hyperparameters
    (not the endpoint, the API version or the token limit)."""
    o = cfg.openai
    return {"backend": cfg.backend, "method": o.method, "n_epochs": o.n_epochs,
            "batch_size": o.batch_size, "learning_rate_multiplier": o.learning_rate_multiplier}


# ------------------------------------------------------------------------------------------ jobs
def _dict(obj) -> dict:
    return obj.model_dump() if hasattr(obj, "model_dump") else dict(obj)


def find_pair_jobs(client, pair_id: str, cancelled: bool = False) -> dict[str, dict]:
    """The pair's jobs by arm, newest first wins. Cancelled jobs count only with `cancelled`
    (status and cancel show them; for submit a cancelled job is no part of the pair)."""
    found: dict[str, dict] = {}
    for job in client.fine_tuning.jobs.list(metadata={"pair_id": pair_id}, limit=100):
        job = _dict(job)
        arm = hosted.arm_of(job, pair_id)
        if arm and arm not in found and (cancelled or job["status"] != "cancelled"):
            found[arm] = job
        if len(found) == len(ARMS):
            break
    return found


def _processed_uploads(client) -> dict[str, str]:
    """{filename: file id} of the processed fine-tuning files (newest wins)."""
    found: dict[str, str] = {}
    for f in client.files.list(purpose="fine-tune"):
        if f.status == "processed":
            found.setdefault(f.filename, f.id)
    return found


def _upload(client, name: str, path: Path, sha256: str, pair_id: str, poll: float,
            timeout: float, sleep, say, existing: dict[str, str]) -> str:
    """Upload one file for fine-tuning (or reuse a processed upload of the same bytes, named by
    pair, role and content hash) and wait until the service has processed it. A rejected file
    raises HostedError(exit 2)."""
    filename = f"{pair_id}-{name}-{sha256[:16]}.jsonl"
    if filename in existing:
        say(f"{name}: reusing upload {existing[filename]} ({filename})")
        return existing[filename]
    with open(path, "rb") as f:
        uploaded = client.files.create(file=(filename, f), purpose="fine-tune")
    say(f"{name}: uploaded {path} as {uploaded.id}")
    deadline, interval = time.monotonic() + timeout, min(poll, 0.5)
    while uploaded.status not in ("processed", "error"):
        if time.monotonic() > deadline:
            raise HostedError(f"{name}: {uploaded.id} still {uploaded.status} after {timeout:.0f} s")
        sleep(interval)
        interval = min(poll, interval * 2)  # small files are processed in a second or two
        uploaded = client.files.retrieve(uploaded.id)
    if uploaded.status == "error":
        details = uploaded.status_details or "no details"
        raise HostedError(f"{path}: the service rejected the file ({details}); no job was "
                          "created", EXIT_BAD_INPUT)
    return uploaded.id


@dataclass
class Submitted:
    pair_id: str
    jobs: dict[str, dict]
    created: bool  # False: the pair already existed and nothing was sent


def submit_pair(client, prep: Prepared, *, force: bool = False, poll: float = 2.0,
                file_timeout: float = 1800.0, sleep=time.sleep, say=print,
                before_create: Callable[[], None] | None = None) -> Submitted:
    """Upload the files and create both jobs; or report the pair's existing jobs.
    `before_create` (the budget check) runs once the pair is known to be new."""
    import openai

    pair_id = prep.pair_id
    if force:
        pair_id = f"{pair_id}-{uuid.uuid4().hex[:6]}"
    else:
        existing = find_pair_jobs(client, pair_id)
        for arm, job in existing.items():
            if diff := identity_mismatch(job, prep, arm):
                raise HostedError(f"the {arm} job {job['id']} of pair {pair_id} is not this "
                                  f"pair's: {'; '.join(diff)}. Choose another --pair-id, or drop "
                                  "--pair-id to derive one from the config", EXIT_BAD_INPUT)
        if len(existing) == len(ARMS):
            return Submitted(pair_id, existing, created=False)
        if existing:
            (arm, job), = existing.items()
            if job["status"] in TERMINAL:  # it ended: nothing to cancel, the pair cannot be done
                raise HostedError(f"pair {pair_id} has only its {arm} job ({job['id']}, "
                                  f"{job['status']}): it cannot be completed under this id; "
                                  "submit with --force for a new pair")
            raise HostedError(f"pair {pair_id} has only its {arm} job ({job['id']}, "
                              f"{job['status']}): cancel it (train cancel {pair_id}) and submit "
                              "again, or submit with --force for a new pair")
    if before_create is not None:
        before_create()
    existing = _processed_uploads(client)
    ids: dict[str, str] = {}
    for name, path in prep.files.items():
        try:
            ids[name] = _upload(client, name, path, prep.report.files[name].sha256, pair_id,
                                poll, file_timeout, sleep, say, existing)
        except openai.APIError as e:
            kept = (f"; the files uploaded before it ({', '.join(ids)}) stay on the account and "
                    "the next submit reuses them") if ids else ""
            raise HostedError(f"{name}: uploading {path} failed ({describe_error(e)}); no job was "
                              f"created{kept}") from None
    cfg = prep.cfg
    hyper = hyperparameters(cfg)
    jobs: dict[str, dict] = {}
    # a create is never retried: the service may have made the job before the answer was lost,
    # and a retry would make a second one (the jobs API takes no idempotency key)
    creator = client.with_options(max_retries=0)
    for arm in ARMS:
        request = hosted.job_request(model=cfg.base_model, seed=cfg.training.seed,
                                     hyperparameters=hyper, pair_id=pair_id, arm=arm,
                                     training_file=ids[arm], validation_file=ids.get("eval"),
                                     metadata=prep.metadata(arm))
        try:
            jobs[arm] = _dict(creator.fine_tuning.jobs.create(**request))
        except (openai.APIError, KeyboardInterrupt) as e:
            # no answer (a Ctrl-C, a timeout, a reset) may still mean a job: look, then undo all
            unsure = ""
            try:
                if in_flight := find_pair_jobs(client, pair_id).get(arm):
                    jobs[arm] = in_flight
            except (openai.APIError, KeyboardInterrupt):  # the service still does not answer
                unsure = (f"; the {arm} job MAY HAVE BEEN CREATED (the service did not answer): "
                          f"check with `train status {pair_id} --backend ...` and cancel it with "
                          f"`train cancel {pair_id} --backend ...`")
            rolled = (_roll_back(client, jobs, say) if jobs or not unsure
                      else "no job is known to have been created") + unsure
            if isinstance(e, KeyboardInterrupt):
                raise HostedError(f"interrupted while creating the {arm} job; {rolled}",
                                  EXIT_INTERRUPTED) from None
            what = ("the service refused the job" if isinstance(e, openai.APIStatusError)
                    else "creating the job failed")
            raise HostedError(f"{arm}: {what} ({describe_error(e)}); {rolled}") from None
        say(f"{arm}: job {jobs[arm]['id']} created ({jobs[arm]['status']})")
    return Submitted(pair_id, jobs, created=True)


def identity_mismatch(job: dict, prep: Prepared, arm: str) -> list[str]:
    """How an existing job differs from the one this pair would create (a --pair-id reused for
    another config, other data or other hyperparameters): its metadata and the hyperparameters
    set in the file (`auto` ones are the service's to resolve)."""
    meta, want = job.get("metadata") or {}, prep.metadata(arm)
    diff = [f"{key} {meta[key][:12]!r} (this pair: {want.get(key, '')[:12]!r})"
            for key in ("config_sha256", "data_sha256", "eval_sha256")
            if key in meta and meta[key] != want.get(key, "")]
    resolved = job.get("hyperparameters") or {}
    for key in ("n_epochs", "batch_size", "learning_rate_multiplier"):
        value, got = getattr(prep.cfg.openai, key), resolved.get(key)
        if value == "auto" or got in (None, "auto", value):  # None: the service did not say
            continue
        try:
            same = float(got) == float(value)
        except (TypeError, ValueError):  # text the service chose: compared as text
            same = str(got) == str(value)
        if not same:
            diff.append(f"{key} {got} (this pair: {value})")
    return diff


def _roll_back(client, jobs: dict[str, dict], say) -> str:
    import openai

    if not jobs:
        return "no job was created"
    done = []
    for arm, job in jobs.items():
        try:
            client.fine_tuning.jobs.cancel(job["id"])
            done.append(f"the {arm} job {job['id']} was cancelled")
        except (openai.APIError, KeyboardInterrupt) as e:  # a second Ctrl-C: say what is left
            why = "interrupted" if isinstance(e, KeyboardInterrupt) else describe_error(e)
            done.append(f"cancelling the {arm} job {job['id']} FAILED ({why}): it is still "
                        "running; cancel it with `train cancel PAIR --backend ...` or in the "
                        "service's portal")
    say("; ".join(done))
    return "; ".join(done)


def pair_jobs(client, pair_id: str) -> dict[str, dict]:
    """The pair's newest job of each arm, cancelled ones included."""
    jobs = find_pair_jobs(client, pair_id, cancelled=True)
    if not jobs:
        raise HostedError(f"no fine-tuning jobs found for pair {pair_id}", EXIT_BAD_INPUT)
    return jobs


def recent_pairs(client, limit: int = 100) -> dict[str, dict[str, dict]]:
    """The pairs among the newest `limit` jobs made by this tool: {pair_id: {arm: job}}."""
    pairs: dict[str, dict[str, dict]] = {}
    for job in client.fine_tuning.jobs.list(metadata={"created_by": hosted.TOOL}, limit=limit):
        job = _dict(job)
        meta = job.get("metadata") or {}
        if meta.get("created_by") == hosted.TOOL and meta.get("pair_id"):
            pairs.setdefault(meta["pair_id"], {}).setdefault(meta.get("arm", "?"), job)
        limit -= 1
        if limit <= 0:
            break
    return pairs


def cancel_pair(client, pair_id: str) -> dict[str, tuple[str, bool]]:
    """Cancel the pair's jobs that are still running; every arm is tried even if one fails.
    {arm: (what happened, whether it failed)}."""
    import openai

    out = {}
    for arm, job in pair_jobs(client, pair_id).items():
        if job["status"] in TERMINAL:
            out[arm] = (f"{job['id']} already {job['status']}", False)
            continue
        try:
            out[arm] = (f"{job['id']} {client.fine_tuning.jobs.cancel(job['id']).status}", False)
        except openai.APIError as e:
            out[arm] = (f"{job['id']} could not be cancelled ({describe_error(e)}): it is still "
                        f"running; try again, or cancel it in the service's portal", True)
    return out


def wait_pair(client, pair_id: str, *, poll: float = 10.0, max_poll: float = 120.0,
              factor: float = 1.5, timeout: float | None = None, sleep=time.sleep,
              on_event: Callable[[str, dict], None] | None = None,
              say: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Poll the pair until both jobs end. The interval grows by `factor` while nothing happens
    (up to max_poll) and is reset by a new event; a 429 waits its `retry-after`. New job events
    are passed to on_event(arm, event), oldest first; `say` hears why following pauses."""
    import openai

    seen: dict[str, set] = {arm: set() for arm in ARMS}
    jobs = pair_jobs(client, pair_id)
    interval, start, first = poll, time.monotonic(), True
    failing_since = None
    while True:
        try:
            fresh = False
            for arm, job in jobs.items():
                if job["status"] in TERMINAL and not first:
                    continue
                jobs[arm] = _dict(client.fine_tuning.jobs.retrieve(job["id"]))
                events = client.fine_tuning.jobs.list_events(job["id"], limit=50).data
                for event in reversed(events):  # the service lists newest first
                    if event.id not in seen[arm]:
                        seen[arm].add(event.id)
                        fresh = True
                        if on_event:
                            on_event(arm, _dict(event))
        except openai.RateLimitError as e:
            pause = retry_after(e, interval)
            if say:
                say(f"rate limited by the service: following again in {pause:.3g} s")
            sleep(pause)
            continue
        except (openai.APIConnectionError, openai.InternalServerError) as e:
            # a passing outage (after the client's own retries): following goes on for up to
            # 10 minutes of failures in a row, then the error ends it
            if failing_since is None and say:
                say(f"the service does not answer ({describe_error(e)}): retrying for up to 10 min")
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > 600:
                raise
            sleep(max(interval, 1.0))
            continue
        failing_since = None
        first = False
        if all(job["status"] in TERMINAL for job in jobs.values()):
            return jobs
        if timeout is not None and time.monotonic() - start > timeout:
            raise HostedError(f"pair {pair_id} still running after {timeout:.0f} s")
        interval = poll if fresh else min(max_poll, interval * factor)
        sleep(interval)


__all__ = ["job_steps", "log_pair", "make_client"]
