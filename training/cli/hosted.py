"""`train submit/status/logs/cancel` with `--backend openai | azure-openai`: the pair as two
fine-tuning jobs on a managed service (`training.hosted`).

Not a command module: the Azure ML commands (training.cli.submit, training.cli.follow) carry its
`hosted_backend(...)` decorator, which adds `--backend` (and what the hosted backend needs) and,
when the backend is hosted, runs the command here instead, before any Pulumi stack is read. The
openai client is imported inside the commands; its errors reach the one translator
(training.cli.common).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import wraps
from pathlib import Path

import click

from training.cli.common import (
    check_submit_options,
    checked_pair_id,
    diagnostics,
    emit_json,
    enforce_budget,
    note,
    print_warnings,
    results,
)
from training.errors import BadInput, Failed, exit_interrupted
from training.experiment.config import BACKENDS, HOSTED_BACKENDS, load_config
from training.experiment.locks import submit_lock


def hosted_backend(command: str):
    """Decorate the Azure ML command `command` (submit | status | logs | cancel)."""

    def decorate(f):
        @wraps(f)
        def wrapper(*args, backend=None, tracking_uri=None, hosted_config=None, wait_status=False,
                    status_poll=30.0, **kwargs):
            config_path = hosted_config or kwargs.pop("config_path", None)
            if backend is None and (command == "submit" or hosted_config):
                backend = load_config(config_path).backend
            if backend in HOSTED_BACKENDS:
                run = {"submit": _submit, "status": _status, "logs": _logs, "cancel": _cancel}
                extra = ({"wait_": wait_status, "poll_seconds": status_poll}
                         if command == "status" else {})
                return run[command](backend=backend, config_path=config_path,
                                    tracking_uri=tracking_uri, **extra, **kwargs)
            if command == "status" and wait_status:
                raise BadInput("status --wait follows a hosted pair (--backend openai | "
                               "azure-openai); on Azure ML use `train submit --wait`")
            if command == "submit":
                kwargs["config_path"] = config_path
            return f(*args, **kwargs)

        wrapper = click.option(
            "--backend", type=click.Choice(BACKENDS), default=None,
            help="Where the pair runs [default: the experiment file's `backend`, else azureml]."
        )(wrapper)
        if command in ("submit", "status"):
            wrapper = click.option(
                "--tracking-uri", default=None,
                help="Hosted backends: the MLflow store the finished jobs' metrics go to "
                     "[default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db]."
            )(wrapper)
        if command != "submit":
            wrapper = click.option(
                "--config", "hosted_config", type=click.Path(path_type=Path), default=None,
                help="Hosted backends: the experiment file (its backend and Azure OpenAI "
                     "endpoint)."
            )(wrapper)
        if command == "status":
            wrapper = click.option(
                "--wait", "wait_status", is_flag=True,
                help="Hosted backends: poll until both jobs end, printing their events; exit 0 "
                     "only if both succeeded."
            )(wrapper)
            wrapper = click.option("--poll-seconds", "status_poll", type=click.FloatRange(min=0),
                                   default=30.0, hidden=True)(wrapper)
        return wrapper

    return decorate


@contextmanager
def _errors():
    """A Ctrl-C while talking to the service: one line, exit 130. Service errors reach the one
    translator (training.cli.common.translate): bad credentials exit 2, the rest exit 1."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        exit_interrupted()


def _checked(pair_id: str | None, what: str = "PAIR") -> None:
    """The same rule for a pair id as on Azure ML, before anything is read, written or sent:
    it names uploads, dry-run files and the jobs' metadata."""
    if pair_id is not None:
        checked_pair_id(pair_id, what)


def _azure_ml_only(backend: str, stack=None, outputs_file=None, from_sweep=None, **_) -> None:
    """Options that mean something on Azure ML only are refused, not silently ignored."""
    given = [flag for flag, value in (("--stack", stack), ("--outputs-file", outputs_file),
                                      ("--from-sweep", from_sweep)) if value]
    if given:
        raise BadInput(f"{', '.join(given)}: Azure ML options; the {backend} backend has no "
                       "stack or sweeps (drop them, or use --backend azureml)")


def _budget_guard(cfg, prep, allow_over_budget: bool, console):
    """The service bills training tokens: the check that refuses (exit 1, nothing uploaded) a pair
    whose estimate exceeds budget_usd, unless allowed. Run only when the pair is to be created:
    a pair that exists is reported whatever the budget says now."""
    from training.hosted.cost import budget_problems, pair_cost

    if cfg.budget_usd is None:
        return None
    problems = budget_problems(cfg, pair_cost(cfg, prep.report))
    return lambda: enforce_budget(
        problems, cfg.budget_usd, allow_over_budget, console,
        "Nothing was uploaded: fewer epochs (openai.n_epochs) or less data, or "
        "--allow-over-budget (`train estimate` shows the figures)")


def _client(backend, config_path):
    from training.hosted.backend import make_client

    cfg = load_config(config_path) if config_path else None
    return make_client(backend, cfg)


def _print_jobs(jobs: dict, console) -> None:
    from rich.table import Table
    from rich.text import Text

    from training.hosted import service as hosted
    from training.terminal import printable

    table = Table(box=None, pad_edge=False)
    for col in ("arm", "job", "status", "trained tokens", "model"):
        table.add_column(col)
    for arm, job in jobs.items():  # the service's strings: never markup, never raw control codes
        tokens = f"{job['trained_tokens']:,}" if job.get("trained_tokens") else ""
        table.add_row(*(Text(printable(s)) for s in (
            arm, job["id"], job["status"], tokens, job.get("fine_tuned_model") or "")))
    console.print(table)
    for arm, job in jobs.items():
        if job.get("error") and job["error"].get("message"):
            console.print(f"{arm}: {printable(job['error']['message'])}", markup=False)
    diff = hosted.differing_hyperparameters(jobs.values())
    if diff:
        console.print("warning: the service resolved the arms' hyperparameters differently: "
                      + ", ".join(f"{k} {v[0]} vs {v[1]}" for k, v in diff.items()),
                      style="yellow", markup=False)


def _submit(*, backend, config_path, tracking_uri, pair_id, force, dry_run, out_dir, wait_,
            poll_seconds, fmt="table", **_stack):
    import json

    from training.hosted import backend as ob

    console = diagnostics()
    check_submit_options(dry_run, out_dir, wait_, pair_id, force)
    _azure_ml_only(backend, **_stack)
    _checked(pair_id, "--pair-id")
    cfg = load_config(config_path).model_copy(update={"backend": backend})
    with _errors():
        with console.status("validating the data against the service's format and limits"):
            prep = ob.prepare(cfg, pair_id=pair_id)
        print_warnings(prep.warnings[:20], console)
        within_budget = _budget_guard(cfg, prep, _stack.get("allow_over_budget", False), console)
        if dry_run:  # --out is made only now, when every check has passed
            from training.azureml.submission import check_out_dir

            check_out_dir(out_dir)
            written = []
            for arm, request in ob.dry_run_requests(cfg, prep).items():
                path = out_dir / f"{prep.pair_id}-{arm}.json"
                path.write_text(json.dumps(request, indent=2) + "\n", encoding="utf-8")
                written.append({"arm": arm, "file": str(path)})
            if fmt == "json":
                emit_json({"pair_id": prep.pair_id, "backend": backend, "state": "dry-run",
                           "dry_run": True, "jobs": written})
                return
            out = results()
            for item in written:
                out.print(f"wrote {item['file']}", highlight=False)
            out.print(f"pair {prep.pair_id}: nothing was sent", highlight=False)
            return
        client = _client(backend, config_path)
        lock = submit_lock(prep.pair_id, note(console))
        try:
            result = ob.submit_pair(client, prep, force=force, poll=min(poll_seconds, 5.0),
                                    say=lambda m: console.print(m, markup=False, highlight=False),
                                    before_create=within_budget)
        finally:
            lock.release()
        if fmt != "json":
            out = results()
            out.print(f"pair [bold]{result.pair_id}[/] on {backend}: "
                      + ("created both jobs" if result.created
                         else "already submitted, nothing created or uploaded"))
            _print_jobs(result.jobs, out)
        console.print(f"follow it: train status {result.pair_id} --backend {backend} --wait | "
                      f"train cancel {result.pair_id} --backend {backend}", markup=False)
        if wait_:
            _follow(client, backend, result.pair_id, tracking_uri, poll_seconds, console, fmt=fmt,
                    state="submitted" if result.created else "already-submitted")
        elif fmt == "json":
            emit_json(_pair_json(result.pair_id, backend, result.jobs,
                                 "submitted" if result.created else "already-submitted"))


def _pair_json(pair_id, backend, jobs, state, runs=None) -> dict:
    return {"pair_id": pair_id, "backend": backend, "state": state, "dry_run": False,
            "jobs": [{"arm": arm, "name": job["id"], "status": job["status"],
                      "trained_tokens": job.get("trained_tokens"),
                      "fine_tuned_model": job.get("fine_tuned_model")}
                     for arm, job in jobs.items()],
            **({"mlflow_runs": runs} if runs is not None else {})}


def _follow(client, backend, pair_id, tracking_uri, poll_seconds, console, wait_=True,
            fmt="table", state=None):
    from training.experiment.tracking import redacted
    from training.experiment.tracking import tracking_uri as resolve_uri
    from training.hosted import backend as ob
    from training.terminal import printable

    def event(arm, e):
        console.print(f"{arm}: {printable(e.get('message'))}", markup=False, highlight=False)

    if wait_:
        try:
            jobs = ob.wait_pair(client, pair_id, poll=poll_seconds,
                                max_poll=max(poll_seconds, 1.0) * 8, on_event=event,
                                say=lambda m: console.print(m, style="yellow", markup=False,
                                                            highlight=False))
        except KeyboardInterrupt:
            console.print(f"stopped following; the jobs keep running: train status {pair_id} "
                          f"--backend {backend} | train cancel {pair_id} --backend {backend}",
                          markup=False)
            exit_interrupted()
    else:
        jobs = ob.pair_jobs(client, pair_id)
    if fmt != "json":
        _print_jobs(jobs, results())
    runs = {}
    if any(j["status"] in ("succeeded", "failed") for j in jobs.values()):
        uri = resolve_uri(tracking_uri)
        runs = _log_pair(client, pair_id, jobs, uri)
        for arm, run_id in runs.items():
            console.print(f"{arm}: MLflow run {run_id}", markup=False)
        if runs:
            console.print(f"in {redacted(uri)}: train compare {pair_id} (the service reports "
                          "aggregate losses only, no per-example losses)", markup=False)
    ended = all(j["status"] in ob.TERMINAL for j in jobs.values())
    if fmt == "json":
        emit_json(_pair_json(pair_id, backend, jobs,
                             ("completed" if all(j["status"] == "succeeded" for j in jobs.values())
                              else "ended") if ended else (state or "running"), runs))
    if wait_ and any(j["status"] != "succeeded" for j in jobs.values()):
        raise Failed("not every job succeeded: " + ", ".join(
            f"{arm} ({job['status']})" for arm, job in jobs.items()
            if job["status"] != "succeeded"))


def _log_pair(client, pair_id, jobs, uri):
    """The finished jobs into MLflow; a store that cannot be written is one line, exit 1 (the
    jobs' table is printed already), with no password of the URI in it."""
    import openai

    from training.experiment.tracking import redacted
    from training.hosted import backend as ob

    try:
        return ob.log_pair(client, pair_id, jobs, uri)
    except openai.APIError:
        raise  # the service's: reported by the translator
    except Exception as e:  # MLflow raises many kinds for a bad or dead store
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise Failed(redacted(f"MLflow store {uri}: {first}; the metrics were not logged (run "
                              "the same command again when the store is reachable)")) from None


def _status(*, backend, config_path, tracking_uri, pair_id, wait_, poll_seconds, fmt="table",
            **_stack):
    from training.hosted.backend import recent_pairs

    console = diagnostics()
    if not pair_id and wait_:
        raise BadInput(f"--wait needs the pair id: train status PAIR --backend {backend} --wait")
    _azure_ml_only(backend, **_stack)
    _checked(pair_id)
    with _errors():
        client = _client(backend, config_path)
        if pair_id:
            _follow(client, backend, pair_id, tracking_uri, poll_seconds, console, wait_=wait_,
                    fmt=fmt)
            return
        pairs = recent_pairs(client)
        if fmt == "json":
            emit_json({"backend": backend, "pairs": [_pair_json(pid, backend, jobs, None)
                                                     for pid, jobs in pairs.items()]})
            return
        out = results()
        if not pairs:
            out.print(f"no pairs among the recent fine-tuning jobs on {backend}")
        for pid, jobs in pairs.items():
            arms = "  ".join(f"{arm}: {job['status']}" for arm, job in sorted(jobs.items()))
            out.print(f"{pid:<40} {arms}", markup=False, highlight=False)


def _logs(*, backend, config_path, tracking_uri, pair_id, arm, replicate, **_stack):
    from training.hosted import backend as ob

    if replicate:
        raise BadInput("hosted pairs have no seed replicates")
    _azure_ml_only(backend, **_stack)
    _checked(pair_id)
    out = results()
    with _errors():
        client = _client(backend, config_path)
        jobs = ob.pair_jobs(client, pair_id)
        if arm not in jobs:
            raise BadInput(f"pair {pair_id} has no {arm} job")
        job = jobs[arm]
        events = list(client.fine_tuning.jobs.list_events(job["id"], limit=100))
        for e in reversed(events):  # the service lists newest first
            out.print(f"{e.created_at} {e.level:<5} {e.message}", markup=False, highlight=False)
        out.print(f"{arm}: {job['id']} {job['status']}", markup=False)


def _cancel(*, backend, config_path, tracking_uri, pair_id, **_stack):
    from training.hosted import backend as ob

    _azure_ml_only(backend, **_stack)
    _checked(pair_id)
    with _errors():
        client = _client(backend, config_path)
        outcome = ob.cancel_pair(client, pair_id)
    out = results()
    for arm, (what, _failed) in outcome.items():
        out.print(f"{arm}: {what}", markup=False, highlight=False)
    if any(failed for _, failed in outcome.values()):
        raise Failed("could not cancel every job: " + ", ".join(
            arm for arm, (_, failed) in outcome.items() if failed))
