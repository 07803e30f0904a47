"""`train submit/status/logs/cancel` with `--backend openai | azure-openai`: the pair as two
fine-tuning jobs on a managed service (`training.backends.openai`).

The Azure ML commands carry the `hosted_backend(...)` decorator: it adds `--backend` (and what the
hosted backend needs) and, when the backend is hosted, runs the command here instead, before any
Pulumi stack is read. The openai client is imported inside the commands.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from functools import wraps
from pathlib import Path

import click

from training.experiment.config import BACKENDS, HOSTED_BACKENDS
from training.errors import EXIT_BAD_INPUT, EXIT_FAILED, exit_interrupted


def _cli():
    from training.cli import app as cli

    return cli


def hosted_backend(command: str):
    """Decorate the Azure ML command `command` (submit | status | logs | cancel)."""

    def decorate(f):
        @wraps(f)
        def wrapper(*args, backend=None, tracking_uri=None, hosted_config=None, wait_status=False,
                    status_poll=30.0, **kwargs):
            config_path = hosted_config or kwargs.pop("config_path", None)
            if backend is None and (command == "submit" or hosted_config):
                backend = _cli()._load(config_path).backend
            if backend in HOSTED_BACKENDS:
                run = {"submit": _submit, "status": _status, "logs": _logs, "cancel": _cancel}
                extra = ({"wait_": wait_status, "poll_seconds": status_poll}
                         if command == "status" else {})
                return run[command](backend=backend, config_path=config_path,
                                    tracking_uri=tracking_uri, **extra, **kwargs)
            if command == "status" and wait_status:
                _cli().bad_input("status --wait follows a hosted pair (--backend openai | "
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
    """Service errors: one line, never a traceback; bad credentials and input exit 2."""
    import openai

    from training.hosted.backend import HostedError, describe_error

    try:
        yield
    except HostedError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
        click.echo(f"error: the service refused the credentials ({describe_error(e)})", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except openai.APIError as e:
        click.echo(f"error: request failed ({describe_error(e)})", err=True)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        exit_interrupted()


def _checked(pair_id: str | None) -> None:
    """The same rule for a pair id as on Azure ML, before anything is read, written or sent:
    it names uploads, dry-run files and the jobs' metadata."""
    from training.cli.follow import _checked as checked  # cli_follow imports this module

    if pair_id is not None:
        checked(pair_id)


def _azure_ml_only(backend: str, stack=None, outputs_file=None, from_sweep=None, **_) -> None:
    """Options that mean something on Azure ML only are refused, not silently ignored."""
    given = [flag for flag, value in (("--stack", stack), ("--outputs-file", outputs_file),
                                      ("--from-sweep", from_sweep)) if value]
    if given:
        _cli().bad_input(f"{', '.join(given)}: Azure ML options; the {backend} backend has no "
                         "stack or sweeps (drop them, or use --backend azureml)")


def _budget_guard(cfg, prep, allow_over_budget: bool, console):
    """The service bills training tokens: the check that refuses (exit 1, nothing uploaded) a pair
    whose estimate exceeds budget_usd, unless allowed. Run only when the pair is to be created:
    a pair that exists is reported whatever the budget says now."""
    from training.hosted.cost import estimate_pair_cost

    if cfg.budget_usd is None:
        return None
    costs = estimate_pair_cost(prep.report, cfg.base_model, cfg.openai.n_epochs,
                               token_limit=cfg.openai.example_token_limit)
    from training.cli.budget import enforce_budget

    total = sum(c.usd for c in costs.values())
    problems = ([f"the estimate {total:,.2f} USD exceeds budget_usd {cfg.budget_usd:,.2f}"]
                if total > cfg.budget_usd else [])
    return lambda: enforce_budget(
        problems, cfg.budget_usd, allow_over_budget, console,
        "Nothing was uploaded: fewer epochs (openai.n_epochs) or less data, or "
        "--allow-over-budget (`train estimate` shows the figures)")


def _client(backend, config_path):
    from training.hosted.backend import make_client

    cfg = _cli()._load(config_path) if config_path else None
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
            poll_seconds, **_stack):
    import json

    from training.hosted import backend as ob
    from training.hosted.service import job_request

    cli = _cli()
    console = cli._console()
    if dry_run != (out_dir is not None):
        cli.bad_input("--dry-run and --out go together: --dry-run --out DIR")
    if dry_run and wait_:
        cli.bad_input("--wait follows submitted jobs: it does nothing with --dry-run")
    if pair_id is not None and force:
        cli.bad_input("--pair-id and --force exclude each other (--force makes a new pair id)")
    _azure_ml_only(backend, **_stack)
    _checked(pair_id)
    if dry_run:
        from training.cli.azure import check_out_dir

        check_out_dir(out_dir)
    cfg = cli._load(config_path).model_copy(update={"backend": backend})
    with _errors():
        with console.status("validating the data against the service's format and limits"):
            prep = ob.prepare(cfg, pair_id=pair_id)
        for w in prep.warnings[:20]:
            console.print(f"warning: {w}", style="yellow", markup=False, highlight=False)
        within_budget = _budget_guard(cfg, prep, _stack.get("allow_over_budget", False), console)
        if dry_run:
            hyper = {k: getattr(cfg.openai, k)
                     for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
            for arm in ("control", "experiment"):
                request = job_request(
                    model=cfg.base_model, seed=cfg.training.seed, hyperparameters=hyper,
                    pair_id=prep.pair_id, arm=arm, training_file=f"<upload of {prep.files[arm]}>",
                    validation_file=cfg.eval and f"<upload of {cfg.eval}>",
                    metadata=prep.metadata(arm))
                path = out_dir / f"{prep.pair_id}-{arm}.json"
                path.write_text(json.dumps(request, indent=2) + "\n", encoding="utf-8")
                console.print(f"wrote {path}")
            console.print(f"pair {prep.pair_id}: nothing was sent")
            return
        client = _client(backend, config_path)
        lock = _one_submitter(prep.pair_id)
        try:
            result = ob.submit_pair(client, prep, force=force, poll=min(poll_seconds, 5.0),
                                    say=lambda m: console.print(m, markup=False, highlight=False),
                                    before_create=within_budget)
        finally:
            lock.release()
        console.print(f"pair [bold]{result.pair_id}[/] on {backend}: "
                      + ("created both jobs" if result.created
                         else "already submitted, nothing created or uploaded"))
        _print_jobs(result.jobs, console)
        console.print(f"follow it: train status {result.pair_id} --backend {backend} --wait | "
                      f"train cancel {result.pair_id} --backend {backend}", markup=False)
        if wait_:
            _follow(client, backend, result.pair_id, tracking_uri, poll_seconds, console)


def _one_submitter(pair_id: str):
    """Two `train submit` of one pair at once (a CI re-run, a double Enter) would both find no
    job and create two pairs under one id: on this machine, the second is refused. The lock
    (in $PAIRED_FINETUNE_LOCK_DIR, else the temp folder) is held until the jobs exist."""
    import os
    import tempfile

    from training.experiment import locks

    root = Path(os.environ.get("PAIRED_FINETUNE_LOCK_DIR") or tempfile.gettempdir())
    folder = root / f"paired-finetune-submit-{os.getuid()}" / pair_id  # one user's own folder
    try:
        return locks.acquire(folder)
    except locks.Busy:
        _cli().bad_input(f"another `train submit` of pair {pair_id} is running "
                         f"({locks.holder(folder)})")
    except OSError as e:  # no lock to be had here (permissions, a read-only temp folder)
        _cli()._console().print(f"[yellow]note:[/] submitting without the per-pair lock "
                                f"({e.strerror or e})")
        return locks.ArmLock(folder, None)


def _follow(client, backend, pair_id, tracking_uri, poll_seconds, console, wait_=True):
    from training.hosted import backend as ob
    from training.experiment.tracking import redacted
    from training.experiment.tracking import tracking_uri as resolve_uri

    def event(arm, e):
        from training.terminal import printable

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
    _print_jobs(jobs, console)
    if any(j["status"] in ("succeeded", "failed") for j in jobs.values()):
        uri = resolve_uri(tracking_uri)
        runs = _log_pair(client, pair_id, jobs, uri)
        for arm, run_id in runs.items():
            console.print(f"{arm}: MLflow run {run_id}", markup=False)
        if runs:
            console.print(f"in {redacted(uri)}: train compare {pair_id} (the service reports "
                          "aggregate losses only, no per-example losses)", markup=False)
    if wait_ and any(j["status"] != "succeeded" for j in jobs.values()):
        sys.exit(EXIT_FAILED)


def _log_pair(client, pair_id, jobs, uri):
    """The finished jobs into MLflow; a store that cannot be written is one line, exit 1 (the
    jobs' table is printed already), with no password of the URI in it."""
    import openai

    from training.hosted import backend as ob
    from training.experiment.tracking import redacted

    try:
        return ob.log_pair(client, pair_id, jobs, uri)
    except openai.APIError:
        raise  # the service's: reported by _errors
    except Exception as e:  # MLflow raises many kinds for a bad or dead store
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        click.echo(redacted(f"error: MLflow store {uri}: {first}; the metrics were not logged "
                            "(run the same command again when the store is reachable)"), err=True)
        sys.exit(EXIT_FAILED)


def _status(*, backend, config_path, tracking_uri, pair_id, wait_, poll_seconds, **_stack):
    from training.hosted.backend import recent_pairs

    cli = _cli()
    console = cli._console()
    if not pair_id and wait_:
        cli.bad_input(f"--wait needs the pair id: train status PAIR --backend {backend} --wait")
    _azure_ml_only(backend, **_stack)
    _checked(pair_id)
    with _errors():
        client = _client(backend, config_path)
        if pair_id:
            _follow(client, backend, pair_id, tracking_uri, poll_seconds, console, wait_=wait_)
            return
        pairs = recent_pairs(client)
        if not pairs:
            console.print(f"no pairs among the recent fine-tuning jobs on {backend}")
        for pid, jobs in pairs.items():
            arms = "  ".join(f"{arm}: {job['status']}" for arm, job in sorted(jobs.items()))
            console.print(f"{pid:<40} {arms}", markup=False, highlight=False)


def _logs(*, backend, config_path, tracking_uri, pair_id, arm, replicate, **_stack):
    from training.hosted import backend as ob

    cli = _cli()
    if replicate:
        cli.bad_input("hosted pairs have no seed replicates")
    _azure_ml_only(backend, **_stack)
    _checked(pair_id)
    console = cli._console()
    with _errors():
        client = _client(backend, config_path)
        jobs = ob.pair_jobs(client, pair_id)
        if arm not in jobs:
            cli.bad_input(f"pair {pair_id} has no {arm} job")
        job = jobs[arm]
        events = list(client.fine_tuning.jobs.list_events(job["id"], limit=100))
        for e in reversed(events):  # the service lists newest first
            console.print(f"{e.created_at} {e.level:<5} {e.message}", markup=False,
                          highlight=False)
        console.print(f"{arm}: {job['id']} {job['status']}", markup=False)


def _cancel(*, backend, config_path, tracking_uri, pair_id, **_stack):
    from training.hosted import backend as ob

    console = _cli()._console()
    _azure_ml_only(backend, **_stack)
    _checked(pair_id)
    with _errors():
        client = _client(backend, config_path)
        results = ob.cancel_pair(client, pair_id)
    for arm, (what, _failed) in results.items():
        console.print(f"{arm}: {what}", markup=False, highlight=False)
    if any(failed for _, failed in results.values()):
        sys.exit(EXIT_FAILED)
