"""`train status`, `logs`, `cancel`: following a pair on Azure ML once it is submitted (a hosted
pair: training.cli.hosted). A PAIR that cannot name a pair is bad input (exit 2) before any
request. Results on stdout (`status --format json`: one object), diagnostics on stderr.
"""

from __future__ import annotations

import click

from training.cli.common import (
    arm_label,
    azure_client,
    checked_pair_id,
    emit_json,
    format_option,
    jobs_json,
    pair_jobs,
    print_jobs,
    results,
    stack_options,
)
from training.cli.hosted import hosted_backend
from training.errors import BadInput, Failed
from training.experiment.config import ARMS


def _sweep_job(name: str, pair):
    """`train status|cancel SWEEP_JOB`: a sweep made by `train sweep`, by its job name (None:
    NAME is not a sweep's name, so it is a pair id)."""
    from training.azureml.sweep import SWEEP_JOB

    if not SWEEP_JOB.match(name):
        return None
    job = pair.get(name)
    if job is None or getattr(job, "type", None) != "sweep":
        raise BadInput(f"no sweep {name!r} in this workspace")
    return job


@click.command()
@hosted_backend("status")
@click.argument("pair_id", metavar="[PAIR]", required=False)
@stack_options
@format_option("table", "json")
def status(pair_id, outputs, fmt):
    """The jobs of PAIR (status, studio links); without PAIR, the recent pairs in the workspace.

    \b
    train status --stack dev
    train status paired-comments-2dbdb98c0e --outputs-file stack-outputs.json
    train status PAIR --stack dev --format json | jq -r '.jobs[].status'
    """
    from training.azureml.backend import AzurePair, view

    out = results()
    pair = AzurePair(azure_client(outputs))
    if pair_id is not None and (job := _sweep_job(pair_id, pair)) is not None:
        if fmt == "json":
            emit_json({"sweep_job": pair_id, "jobs": jobs_json([view(job)])})
        else:
            print_jobs([view(job)], out)
        return
    if pair_id is None:
        pairs = pair.recent_pairs()
        if fmt == "json":
            emit_json({"workspace": outputs.workspace_name,
                       "pairs": [{"pair_id": pid, "created": views[0].created,
                                  "jobs": jobs_json(sorted(views, key=lambda v: v.name))}
                                 for pid, views in pairs.items()]})
            return
        if not pairs:
            out.print(f"no pairs in workspace {outputs.workspace_name}")
            return
        for pid, views in pairs.items():
            arms = "  ".join(f"{arm_label(v)}: {v.status}"
                             for v in sorted(views, key=lambda v: v.name))
            out.print(f"{pid:<40} {(views[0].created or '')[:19]:<20} {arms}",
                      markup=False, highlight=False)
        return
    views = [view(j) for j in pair_jobs(pair, pair_id)]
    if fmt == "json":
        emit_json({"pair_id": pair_id, "jobs": jobs_json(views)})
    else:
        print_jobs(views, out)


@click.command()
@hosted_backend("logs")
@click.argument("pair_id", metavar="PAIR")
@click.option("--arm", type=click.Choice(ARMS), default="control", show_default=True,
              help="Whose log to stream.")
@click.option("--replicate", type=click.IntRange(min=0), default=None,
              help="With seed replicates: which one [default: the first].")
@stack_options
def logs(pair_id, arm, replicate, outputs):
    """Stream the rank-0 log of one arm of PAIR until its job ends.

    \b
    train logs paired-comments-2dbdb98c0e --arm experiment --stack dev
    """
    from azure.ai.ml.exceptions import JobException

    from training.azureml.backend import AzurePair, job_status

    checked_pair_id(pair_id)
    pair = AzurePair(azure_client(outputs))
    jobs = [j for j in pair_jobs(pair, pair_id) if (j.tags or {}).get("arm") == arm]
    if replicate is not None:
        jobs = [j for j in jobs if (j.tags or {}).get("replicate") == str(replicate)]
    if not jobs:
        raise BadInput(f"pair {pair_id} has no {arm} job"
                       + ("" if replicate is None else f" for replicate {replicate}"))
    try:
        pair.stream(jobs[0].name)
    except JobException as e:
        reason = str(e).replace("Exception :", "").strip().splitlines()
        job = pair.get(jobs[0].name)
        raise Failed(f"{jobs[0].name} did not complete (status "
                     f"{job_status(job) if job is not None else '?'})"
                     + (f": {reason[0]}" if reason and reason[0] else "")
                     + f"; its logs: {getattr(job, 'studio_url', '') or 'the studio'}") from None


@click.command()
@hosted_backend("cancel")
@click.argument("pair_id", metavar="PAIR")
@stack_options
def cancel(pair_id, outputs):
    """Cancel every job of PAIR that has not ended (both arms, every replicate).

    \b
    train cancel paired-comments-2dbdb98c0e --stack dev
    """
    from training.azureml.backend import AzurePair

    out = results()
    pair = AzurePair(azure_client(outputs))
    sweep_job = _sweep_job(pair_id, pair)
    jobs = [sweep_job] if sweep_job is not None else pair_jobs(pair, pair_id)
    results_ = pair.cancel(jobs)
    for name, what in results_:
        trials = " (its running trials with it)" if sweep_job and what == "cancel requested" else ""
        out.print(f"{name}: {what}{trials}", markup=False)
    if any(what.startswith("could not") for _, what in results_):
        raise Failed("could not cancel every job: " + ", ".join(
            name for name, what in results_ if what.startswith("could not")))
