"""`train submit`: the pair as two Azure ML jobs (or, with a hosted backend, two fine-tuning jobs
on a managed service: training.cli.hosted).

Every check runs before the first request; bad input is exit 2, a failed request exit 1. The pair
id, the jobs and the studio links go to stdout (`--format json`: one object); progress to stderr.
"""

from __future__ import annotations

import shlex
import tempfile
import time
from pathlib import Path

import click

from training.cli.common import (
    arm_label,
    azure_client,
    check_submit_options,
    diagnostics,
    emit_json,
    enforce_budget,
    format_option,
    jobs_json,
    note,
    out_option,
    print_jobs,
    results,
    stack_options,
)
from training.cli.hosted import hosted_backend
from training.errors import BadInput, Failed, exit_interrupted

DEFAULT_CONFIG = Path("experiments/paired-comments.yaml")


@click.command()
@hosted_backend("submit")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=DEFAULT_CONFIG,
              show_default=True, help="The experiment file (YAML).")
@stack_options
@click.option("--pair-id", default=None,
              help="Name the pair [default: derived from the config and the data asset "
                   "versions, so submitting again finds the pair instead of training it twice].")
@click.option("--force", is_flag=True,
              help="Submit a new pair even if this one exists (a new pair id, fresh arm folders).")
@click.option("--dry-run", is_flag=True,
              help="Build the jobs and write them as YAML to --out; send nothing.")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              callback=lambda ctx, param, value: out_option(value),
              help="With --dry-run: the folder for the job YAMLs and the code snapshot.")
@click.option("--wait", "wait_", is_flag=True,
              help="Follow the jobs until they end; exit 0 only if every job completed.")
@click.option("--from-sweep", "from_sweep", default=None, metavar="SWEEP_JOB",
              help="Apply the best trial of this sweep job (`train sweep`) to both arms.")
@click.option("--allow-over-budget", is_flag=True,
              help="Submit even if the estimate or the worst case exceeds budget_usd.")
@format_option("table", "json")
@click.option("--poll-seconds", type=click.FloatRange(min=0), default=30.0, hidden=True)
def submit(config_path, outputs, pair_id, force, dry_run, out_dir, wait_, from_sweep,
           allow_over_budget, fmt, poll_seconds):
    """Submit the pair as Azure ML jobs on the stack's GPU cluster, in parallel.

    \b
    train submit --stack dev --config experiments/paired-comments.yaml
    train submit --outputs-file stack-outputs.json --dry-run --out jobs/
    PAIR=$(train submit --stack dev --format json | jq -r .pair_id)

    Both jobs run the same code snapshot, environment, compute, resources, seed and config; only
    the training data input, names and the `arm` tag differ. Prints the pair id and the studio
    links. Submitting the same pair again reports its jobs and creates nothing.
    """
    from training.azureml import jobs as jobs_mod
    from training.azureml import submission
    from training.experiment.config import load_config
    from training.experiment.tracking import code_version
    from training.plan import pair_estimate

    console = diagnostics()
    warn = _warning(console)
    # usage first: instant, before any hub lookup or request
    check_submit_options(dry_run, out_dir, wait_, pair_id, force)
    if from_sweep is not None and not from_sweep.strip():
        raise BadInput("--from-sweep: empty; give the sweep job's name (`train sweep` prints it)")
    cfg = load_config(config_path)
    for warning in jobs_mod.shared_data_warnings(outputs):
        warn(warning)
    submission.check_shared_eval(cfg, outputs)
    pair_estimate.cluster_check(cfg, outputs, note(console))
    if cfg.budget_usd is None or dry_run:  # else the budget guard validates it as it counts
        pair_estimate.check_local_data(cfg)
    cfg = submission.pin_for_job(cfg, note(console), warn, required=not dry_run)
    tags = {}
    if from_sweep:
        cfg, tags = submission.apply_sweep(azure_client(outputs), cfg, from_sweep, note(console),
                                           warn)
    stamps, given_id = (submission.forced_stamps() if force else None), pair_id

    def plan():
        pid = given_id or jobs_mod.azure_pair_id(cfg, outputs)
        pid = f"{pid}-{next(stamps)}" if stamps else pid
        return pid, jobs_mod.plan_pair(cfg, outputs, pid, code_version(), tags)

    pair_id, planned = plan()
    config_yaml = submission.job_config(cfg, outputs).to_yaml()
    if dry_run:  # --out is made only now, when every check has passed
        submission.check_out_dir(out_dir)
        files, code = submission.write_dry_run(planned, config_yaml, out_dir, note(console))
        if fmt == "json":
            emit_json({"pair_id": pair_id, "state": "dry-run", "dry_run": True,
                       "jobs": [{"name": j.name, "arm": j.arm,
                                 "replicate": j.replicate if "replicate" in j.tags else None,
                                 "status": None, "file": str(f)}
                                for j, f in zip(planned, files, strict=True)],
                       "code": str(code)})
            return
        out = results()
        for path in files:
            out.print(f"wrote {path}", highlight=False)
        out.print(f"code snapshot: {code}", highlight=False)
        console.print(f"nothing was sent; submit one with `az ml job create -f "
                      f"{shlex.quote(str(out_dir / planned[0].name))}.yml`", highlight=False)
        return
    within_budget = _budget_guard(cfg, outputs, allow_over_budget, console)
    _submit(planned, config_yaml, outputs, pair_id, console, wait_, poll_seconds, within_budget,
            fmt, replan=plan if force else None)


def _warning(console):
    return lambda text: console.print(f"[yellow]warning:[/] {text}", highlight=False)


def _budget_guard(cfg, outputs, allow_over_budget: bool, console):
    """Before `train submit` sends anything: price the pair (bad data is exit 2 here) and warn
    when nothing bounds the cost. Returns the check that refuses (exit 1) a pair whose estimate
    or worst case exceeds budget_usd, unless allowed: submit runs it only when it would create a
    job, so a pair that exists is reported whatever the budget says now."""
    from training.plan.pair_estimate import pair_budget_problems

    if cfg.azure.max_run_minutes is None:
        console.print("[yellow]warning:[/] azure.max_run_minutes is not set: the cost of the pair "
                      "has no upper bound")
    if cfg.budget_usd is None:
        return lambda: None
    problems = pair_budget_problems(
        cfg, outputs, lambda text: console.print(f"[yellow]note:[/] {text}"),
        lambda text: console.print(f"warning: {text}", style="yellow", markup=False,
                                   highlight=False))
    return lambda: enforce_budget(
        problems, cfg.budget_usd, allow_over_budget, console,
        "Nothing was submitted: lower the cost (fewer steps, a smaller azure.max_run_minutes), "
        "set azure.max_run_minutes, or pass --allow-over-budget (`train estimate` shows the "
        "figures)")


def _submit(planned, config_yaml, outputs, pair_id, console, wait_, poll_seconds,
            within_budget, fmt, replan=None) -> None:
    from training.azureml.backend import AzurePair, SubmitError, view
    from training.azureml.snapshot import stage_code

    pair = AzurePair(azure_client(outputs))
    while replan and pair.get(planned[0].name) is not None:  # --force: taken this second
        pair_id, planned = replan()
    with tempfile.TemporaryDirectory(prefix="paired-finetune-code-") as tmp:
        code = stage_code(Path(tmp), config_yaml)
        try:
            result = pair.submit(planned, code, before_create=within_budget)
        except SubmitError as e:
            e.args = (str(e).replace("PAIR", pair_id),)
            raise
    created = [name for name, (_, new) in result.items() if new]
    views = [view(job) for job, _ in result.values()]
    state = "submitted" if created else "already-submitted"
    failed = [v for v in views if v.status in ("Failed", "Canceled", "NotResponding")]
    if fmt != "json":
        out = results()
        out.print(f"pair [bold]{pair_id}[/] in workspace {outputs.workspace_name}: "
                  + (f"created {len(created)} job(s)" if created
                     else "already submitted, nothing created"))
        print_jobs(views, out)
    if not created and failed:  # "already submitted" must not read as success after a failure
        if fmt == "json":
            emit_json({"pair_id": pair_id, "state": "failed", "dry_run": False,
                       "jobs": jobs_json(views)})
        arms = ", ".join(f"{arm_label(v)} ({v.status})" for v in failed)
        raise Failed(f"the pair was submitted before and did not complete: {arms}. Its jobs "
                     f"cannot run again under the same names: `train logs {pair_id} --arm "
                     f"{failed[0].arm}` shows why; `train submit --force` submits a new pair")
    console.print(f"follow it (with the same --stack or --outputs-file): train status {pair_id}"
                  f" | train logs {pair_id} --arm control | train cancel {pair_id}")
    final = _wait(pair, pair_id, [v.name for v in views], console, poll_seconds) if wait_ else None
    if fmt == "json":
        if final is not None:
            views = [view(pair.get(v.name)) for v in views]
            state = "completed" if all(s == "Completed" for s in final.values()) else "ended"
        emit_json({"pair_id": pair_id, "state": state, "dry_run": False,
                   "jobs": jobs_json(views)})
    if final is not None:
        bad = {n: s for n, s in final.items() if s != "Completed"}
        if bad:
            raise Failed("not completed: " + ", ".join(f"{n} ({s})" for n, s in bad.items())
                         + "; `train logs PAIR --arm ARM` shows why")
        console.print("both arms completed")


def _wait(pair, pair_id: str, names: list[str], console, poll_seconds: float) -> dict:
    from azure.core.exceptions import AzureError
    from rich.live import Live
    from rich.text import Text

    last: dict = {}

    def render(statuses):
        return Text("\n".join(f"{name:<48} {status}" for name, status in statuses.items()))

    def changed(statuses):
        for name, status in statuses.items():
            if last.get(name) != status:
                console.print(f"{time.strftime('%H:%M:%S')} {name}: {status}")
                last[name] = status

    try:
        if console.is_terminal:
            with Live(render({n: "?" for n in names}), console=console,
                      refresh_per_second=2) as live:
                return pair.wait(names, lambda s: live.update(render(s)), poll_seconds)
        return pair.wait(names, changed, poll_seconds)
    except KeyboardInterrupt:  # the pair's id, not a replicate's: cancel must reach them all
        console.print(f"stopped following; the jobs keep running: `train status {pair_id}`, "
                      f"`train cancel {pair_id}` (with the same --stack / --outputs-file)")
        exit_interrupted()
    except AzureError as e:  # a login that expired during a long wait, a deleted job...
        from training.azureml.backend import failure_reason

        raise Failed(f"following stopped ({failure_reason(e)}); the jobs were submitted and "
                     f"keep running: `train status {pair_id}`, `train cancel {pair_id}` (with "
                     "the same --stack / --outputs-file)") from None
