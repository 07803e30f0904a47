"""`train status`, `logs`, `cancel`: following a pair on Azure ML once it is submitted.

Registered on the `train` group by `training.cli`, beside `submit` (`training.cli_azure`, whose
stack options, client and error handling these share). A PAIR that cannot name a pair is bad
input (exit 2) before any request.
"""

from __future__ import annotations

import sys

import click

from training.cli.azure import (
    EXIT_FAILED,
    _azure_errors,
    _cli,
    _client,
    _print_jobs,
    stack_options,
)
from training.cli.hosted import hosted_backend
from training.experiment.config import ARMS


def _checked(pair_id: str) -> str:
    """A PAIR argument that cannot name a pair is bad input before any request."""
    from training.azureml.jobs import JobSpecError, check_pair_id
    from training.azureml.sweep import SWEEP_JOB

    if SWEEP_JOB.match(pair_id):
        _cli().bad_input(f"{pair_id} is a sweep's job, not a pair: `train status {pair_id}` "
                         f"shows it and its studio link, `train cancel {pair_id}` stops it")
    try:
        return check_pair_id(pair_id, "PAIR")
    except JobSpecError as e:
        _cli().bad_input(str(e))


def _sweep_job(name: str, outputs, console, cancel: bool) -> bool:
    """`train status|cancel SWEEP_JOB`: a sweep made by `train sweep`, by its job name (False:
    NAME is not a sweep's name, so it is a pair id)."""
    from training.azureml.backend import AzurePair, view
    from training.azureml.sweep import SWEEP_JOB

    if not SWEEP_JOB.match(name):
        return False
    pair = AzurePair(_client(outputs))
    job = pair.get(name)
    if job is None or getattr(job, "type", None) != "sweep":
        _cli().bad_input(f"no sweep {name!r} in this workspace")
    if cancel:
        for job_name, what in pair.cancel([job]):
            console.print(f"{job_name}: {what}" + (" (its running trials with it)"
                                                    if what == "cancel requested" else ""),
                          markup=False)
            if what.startswith("could not"):
                sys.exit(EXIT_FAILED)
        return True
    _print_jobs([view(job)], console)
    return True


def _pair_jobs(pair, pair_id: str):
    jobs = pair.find(pair_id)
    if not jobs:
        known = list(pair.recent_pairs())[:10]
        hint = ("recent pairs: " + ", ".join(known)) if known else "no pairs in this workspace"
        _cli().bad_input(f"no pair {pair_id!r} in this workspace ({hint})")
    return jobs


@click.command()
@hosted_backend("status")
@click.argument("pair_id", metavar="[PAIR]", required=False)
@stack_options
@_azure_errors
def status(pair_id, outputs):
    """The jobs of PAIR (status, studio links); without PAIR, the recent pairs in the workspace.

    \b
    train status --stack dev
    train status paired-comments-2dbdb98c0e --outputs-file stack-outputs.json
    """
    from training.azureml.backend import AzurePair, view

    console = _cli()._console()
    if pair_id is not None and _sweep_job(pair_id, outputs, console, cancel=False):
        return
    if pair_id is not None:
        _checked(pair_id)
    pair = AzurePair(_client(outputs))
    if pair_id is None:
        pairs = pair.recent_pairs()
        if not pairs:
            console.print(f"no pairs in workspace {outputs.workspace_name}")
            return
        for pid, views in pairs.items():
            arms = "  ".join(f"{v.arm}{'' if v.replicate is None else ' r' + v.replicate}: "
                             f"{v.status}" for v in sorted(views, key=lambda v: v.name))
            console.print(f"{pid:<40} {(views[0].created or '')[:19]:<20} {arms}",
                          markup=False, highlight=False)
        return
    _print_jobs([view(j) for j in _pair_jobs(pair, pair_id)], console)


@click.command()
@hosted_backend("logs")
@click.argument("pair_id", metavar="PAIR")
@click.option("--arm", type=click.Choice(ARMS), default="control", show_default=True,
              help="Whose log to stream.")
@click.option("--replicate", type=click.IntRange(min=0), default=None,
              help="With seed replicates: which one [default: the first].")
@stack_options
@_azure_errors
def logs(pair_id, arm, replicate, outputs):
    """Stream the rank-0 log of one arm of PAIR until its job ends.

    \b
    train logs paired-comments-2dbdb98c0e --arm experiment --stack dev
    """
    from azure.ai.ml.exceptions import JobException

    from training.azureml.backend import AzurePair

    _checked(pair_id)
    pair = AzurePair(_client(outputs))
    jobs = [j for j in _pair_jobs(pair, pair_id) if (j.tags or {}).get("arm") == arm]
    if replicate is not None:
        jobs = [j for j in jobs if (j.tags or {}).get("replicate") == str(replicate)]
    if not jobs:
        _cli().bad_input(f"pair {pair_id} has no {arm} job"
                         + ("" if replicate is None else f" for replicate {replicate}"))
    try:
        pair.stream(jobs[0].name)
    except JobException as e:
        reason = str(e).replace("Exception :", "").strip().splitlines()
        from training.azureml.backend import _status

        status = pair.get(jobs[0].name)
        click.echo(f"error: {jobs[0].name} did not complete (status "
                   f"{_status(status) if status is not None else '?'})"
                   + (f": {reason[0]}" if reason and reason[0] else "")
                   + f"; its logs: {getattr(status, 'studio_url', '') or 'the studio'}", err=True)
        sys.exit(EXIT_FAILED)


@click.command()
@hosted_backend("cancel")
@click.argument("pair_id", metavar="PAIR")
@stack_options
@_azure_errors
def cancel(pair_id, outputs):
    """Cancel every job of PAIR that has not ended (both arms, every replicate).

    \b
    train cancel paired-comments-2dbdb98c0e --stack dev
    """
    from training.azureml.backend import AzurePair

    console = _cli()._console()
    if _sweep_job(pair_id, outputs, console, cancel=True):
        return
    _checked(pair_id)
    pair = AzurePair(_client(outputs))
    results = pair.cancel(_pair_jobs(pair, pair_id))
    for name, what in results:
        console.print(f"{name}: {what}", markup=False)
    if any(what.startswith("could not") for _, what in results):
        sys.exit(EXIT_FAILED)


COMMANDS = [status, logs, cancel]
