"""`train submit`, `status`, `logs`, `cancel`: the pair on Azure ML.

The commands are registered on the `train` group by `training.cli`. Every check runs before the
first request; bad input is exit 2, a failed request exit 1. azure-ai-ml is imported inside the
commands (it takes seconds), so `train --help` stays fast.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from functools import wraps
from pathlib import Path

import click

from training.cli.hosted import hosted_backend
from training.experiment.config import ARMS
from training.errors import EXIT_BAD_INPUT, EXIT_FAILED, exit_interrupted

DEFAULT_CONFIG = Path("experiments/paired-comments.yaml")


def _cli():
    from training.cli import app as cli  # the group's helpers; imported late: cli imports this module

    return cli


def stack_options(f):
    """--stack / --outputs-file / --pulumi-dir, read into `outputs` (exit 2 on any problem)."""

    @click.option("--stack", default=None, metavar="NAME",
                  help="Pulumi stack whose outputs name the workspace (runs `pulumi stack output`).")
    @click.option("--outputs-file", type=click.Path(path_type=Path), default=None,
                  help="The stack outputs saved as JSON (the deploy workflow's "
                       "stack-outputs-<stack> artifact), instead of --stack.")
    @click.option("--pulumi-dir", type=click.Path(path_type=Path), default=Path("."),
                  show_default=True, help="The folder that holds Pulumi.yaml.")
    @wraps(f)
    def wrapper(*args, stack, outputs_file, pulumi_dir, **kwargs):
        from training.experiment.stack import StackError, load_outputs

        try:
            outputs = load_outputs(stack, outputs_file, pulumi_dir)
        except StackError as e:
            _cli().bad_input(str(e))
        return f(*args, outputs=outputs, **kwargs)

    return wrapper


def _client(outputs):
    """The MLClient; tests hand a fake transport and credential through click's context object."""
    from training.azureml.backend import connect

    obj = click.get_current_context().obj or {}
    return connect(outputs, credential=obj.get("azure_credential"),
                   transport=obj.get("azure_transport"))


def _azure_errors(f):
    """A request that fails after the checks: one line, exit 1 (a login problem: exit 2)."""

    @wraps(f)
    def wrapper(*args, **kwargs):
        from azure.core.exceptions import AzureError, ClientAuthenticationError

        try:
            return f(*args, **kwargs)
        except ClientAuthenticationError as e:
            click.echo(f"error: cannot authenticate to Azure ({str(e).splitlines()[0][:200]})\n"
                       "  log in with `az login` (or run where a managed identity is available)",
                       err=True)
            sys.exit(EXIT_BAD_INPUT)
        except AzureError as e:
            from training.azureml.backend import _reason

            click.echo(f"error: Azure ML request failed: {_reason(e)}", err=True)
            sys.exit(EXIT_FAILED)

    return wrapper


def job_config(cfg, outputs):
    """The experiment file the jobs read: the same bytes for every job of the pair. Data paths
    name the data assets (the jobs get the files as inputs); `eval` only when the stack has one."""
    from training.experiment.config import Arm, Arms

    assets = outputs.data_assets
    arms = Arms(**{a: Arm(train=Path(assets[a].id)) for a in ARMS})
    shared_eval = Path(assets["eval"].id) if "eval" in assets else None
    return cfg.model_copy(update={"arms": arms, "eval": shared_eval})


# ----------------------------------------------------------------------------- submit
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
              callback=lambda ctx, param, value: _out(value),
              help="With --dry-run: the folder for the job YAMLs and the code snapshot.")
@click.option("--wait", "wait_", is_flag=True,
              help="Follow the jobs until they end; exit 0 only if every job completed.")
@click.option("--from-sweep", "from_sweep", default=None, metavar="SWEEP_JOB",
              help="Apply the best trial of this sweep job (`train sweep`) to both arms.")
@click.option("--allow-over-budget", is_flag=True,
              help="Submit even if the estimate or the worst case exceeds budget_usd.")
@click.option("--poll-seconds", type=click.FloatRange(min=0), default=30.0, hidden=True)
def submit(config_path, outputs, pair_id, force, dry_run, out_dir, wait_, from_sweep,
           allow_over_budget, poll_seconds):
    """Submit the pair as Azure ML jobs on the stack's GPU cluster, in parallel.

    \b
    train submit --stack dev --config experiments/paired-comments.yaml
    train submit --outputs-file stack-outputs.json --dry-run --out jobs/

    Both jobs run the same code snapshot, environment, compute, resources, seed and config; only
    the training data input, names and the `arm` tag differ. Prints the pair id and the studio
    links. Submitting the same pair again reports its jobs and creates nothing.
    """
    from training.azureml import jobs as jobs_mod
    from training.experiment.tracking import code_version

    cli = _cli()
    console = cli._console()
    # usage first: instant, before any hub lookup or request
    if dry_run != (out_dir is not None):
        cli.bad_input("--dry-run and --out go together: --dry-run --out DIR")
    if dry_run and wait_:
        cli.bad_input("--wait follows submitted jobs: it does nothing with --dry-run")
    if pair_id is not None and force:
        cli.bad_input("--pair-id and --force exclude each other (--force makes a new pair id)")
    if from_sweep is not None and not from_sweep.strip():
        cli.bad_input("--from-sweep: empty; give the sweep job's name (`train sweep` prints it)")
    try:
        if pair_id is not None:
            jobs_mod.check_pair_id(pair_id)
    except jobs_mod.JobSpecError as e:
        cli.bad_input(str(e))
    if dry_run:
        check_out_dir(out_dir)
    cfg = cli._load(config_path)
    for warning in jobs_mod.shared_data_warnings(outputs):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if cfg.eval is not None and "eval" not in outputs.data_assets:
        cli.bad_input("the experiment file names a shared eval set (`eval:`) but the stack has no "
                      "`eval` data asset: each arm would be scored on its own holdout, which is "
                      "not comparable. Declare it (`pulumi config set evalAsset true`, `pulumi "
                      "up`, `train data upload`) or remove `eval:` from the experiment file")
    from training.cli.estimate import cluster_check

    cluster_check(cfg, outputs, console)
    if cfg.budget_usd is None or dry_run:  # else the budget guard validates it as it counts
        from training.cli.budget import check_local_data

        check_local_data(cfg)
    cfg = _pinned(cfg, console, required=not dry_run)
    tags = {}
    if from_sweep:
        cfg, tags = _from_sweep(cfg, outputs, from_sweep, console)
    stamps, given_id = (forced_stamps() if force else None), pair_id

    def plan():
        pid = given_id or jobs_mod.azure_pair_id(cfg, outputs)
        pid = f"{pid}-{next(stamps)}" if stamps else pid
        return pid, jobs_mod.plan_pair(cfg, outputs, pid, code_version(), tags)

    try:
        pair_id, planned = plan()
    except jobs_mod.JobSpecError as e:
        cli.bad_input(str(e))
    config_yaml = job_config(cfg, outputs).to_yaml()

    if dry_run:
        _dry_run(planned, config_yaml, out_dir, console)
        return
    from training.cli.budget import budget_guard

    within_budget = budget_guard(cfg, outputs, allow_over_budget, console)
    _submit(planned, config_yaml, outputs, pair_id, console, wait_, poll_seconds, within_budget,
            replan=plan if force else None)


def forced_stamps():
    """--force's suffixes: this second, then the next ones, for when a forced pair or sweep was
    made in the same second (a script, a double Enter): --force always means a new one."""
    start = time.time()
    for k in range(10_000):
        yield time.strftime("%Y%m%d%H%M%S", time.localtime(start + k))


def _out(value: str | None) -> Path | None:
    """--out as given: an empty string is not the current folder."""
    if value is not None and not value.strip():
        raise click.BadParameter("empty; give a folder, e.g. --out jobs/", param_hint="--out")
    return None if value is None else Path(value)


def check_out_dir(out_dir: Path) -> None:
    """--out must be a folder this tool may write: checked before anything is written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".paired-finetune-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        _cli().bad_input(f"--out {out_dir}: cannot write there ({e.strerror or e})")
    from training.azureml.backend import SNAPSHOT_MARKER

    code = out_dir / "code"
    if code.is_symlink() or (code.exists() and not code.is_dir()):
        _cli().bad_input(f"--out {out_dir}: {code} exists and is not a folder")
    if code.is_dir() and any(code.iterdir()) and not (code / SNAPSHOT_MARKER).exists():
        _cli().bad_input(f"--out {out_dir}: {code} holds files this tool did not write; "
                         "choose an empty or new folder")


@_azure_errors
def _from_sweep(cfg, outputs, sweep_job: str, console):
    """The config with the sweep's best values (for both arms), and the tags that record it."""
    from training.experiment.config import ConfigError
    from training.azureml.jobs import JobSpecError
    from training.experiment.overrides import apply_overrides
    from training.azureml.sweep import best_values

    try:
        values, arm, trial = best_values(_client(outputs), sweep_job, cfg)
        cfg = apply_overrides(cfg, values, source=f"--from-sweep {sweep_job}")
    except (JobSpecError, ConfigError) as e:
        _cli().bad_input(str(e))
    shown = ", ".join(f"{k}={v}" for k, v in sorted(values.items()))
    console.print(f"from sweep {sweep_job} (tuned on {arm}, best trial {trial}): {shown}",
                  markup=False)
    if arm == "experiment":
        console.print("[yellow]warning:[/] tuned on the experiment arm: the shared values favour "
                      "it, a bias in the direction the comparison tests (tune on control for a "
                      "conservative verdict)")
    return cfg, {"from_sweep": sweep_job, "tuned_on_arm": arm, "sweep_trial": trial}


def _pinned(cfg, console, required: bool = True):
    """The config with its base model pinned to one revision, resolved here once: both jobs load
    exactly that, however far apart they start. A dry run (required=False) that cannot pin goes
    on unpinned, and says so."""
    from training.experiment.base_model import BaseModelError, kind_of, pin

    if kind_of(cfg.base_model) == "local":
        _cli().bad_input(f"base_model {cfg.base_model}: a folder on this machine cannot be read by "
                         "an Azure ML job; use a hub id (e.g. meta-llama/Meta-Llama-3-8B)")
    try:
        cfg, pinned = pin(cfg, on_note=lambda text: console.print(f"[yellow]note:[/] {text}"))
    except BaseModelError as e:
        if required:
            _cli().bad_input(str(e))
        console.print(f"[yellow]warning:[/] {e}\n  the job files leave the base model unpinned "
                      "(base_model_revision: null); `train submit` without --dry-run refuses that")
        return cfg
    console.print(f"base model {cfg.base_model} pinned to {pinned.revision} ({pinned.source})")
    return cfg


def _dry_run(planned, config_yaml, out_dir: Path, console) -> None:
    from training.azureml.backend import stage_code
    from training.azureml.jobs import job_yaml

    texts = {out_dir / f"{job.name}.yml": job_yaml(job, "./code") for job in planned}
    try:
        remove_stale_jobs(out_dir, set(texts), console)
        code = stage_code(out_dir / "code", config_yaml)
        for path, text in texts.items():
            path.write_text(text, encoding="utf-8")
            console.print(f"wrote {path}")
    except OSError as e:
        _cli().bad_input(f"--out {out_dir}: cannot write {e.filename or ''} ({e.strerror or e})")
    console.print(f"code snapshot: {code}  (nothing was sent; submit one with "
                  f"`az ml job create -f {shlex.quote(str(out_dir / planned[0].name))}.yml`)")


def remove_stale_jobs(out_dir: Path, keep: set[Path], console) -> None:
    """Job YAMLs an earlier dry run left in --out read the code snapshot this one replaces: they
    would submit another pair's names and tags with this config. Only files this tool wrote
    (they name `./code`, beside its snapshot marker) are removed, and each is named."""
    from training.azureml.backend import SNAPSHOT_MARKER

    if not (out_dir / "code" / SNAPSHOT_MARKER).exists():
        return
    for path in sorted(out_dir.glob("*.yml")):
        if path not in keep and "code: ./code" in path.read_text(encoding="utf-8",
                                                                 errors="replace"):
            path.unlink()
            console.print(f"removed {path} (an earlier dry run's job, which would read this "
                          "code snapshot)", highlight=False)


@_azure_errors
def _submit(planned, config_yaml, outputs, pair_id, console, wait_, poll_seconds,
            within_budget, replan=None) -> None:
    from training.azureml.backend import AzurePair, SubmitError, stage_code, view

    pair = AzurePair(_client(outputs))
    while replan and pair.get(planned[0].name) is not None:  # --force: taken this second
        pair_id, planned = replan()
    with tempfile.TemporaryDirectory(prefix="paired-finetune-code-") as tmp:
        code = stage_code(Path(tmp), config_yaml)
        try:
            result = pair.submit(planned, code, before_create=within_budget)
        except SubmitError as e:
            click.echo(f"error: {str(e).replace('PAIR', pair_id)}", err=True)
            sys.exit(e.exit_code)
    created = [name for name, (_, new) in result.items() if new]
    console.print(f"pair [bold]{pair_id}[/] in workspace {outputs.workspace_name}: "
                  + (f"created {len(created)} job(s)" if created
                     else "already submitted, nothing created"))
    views = [view(job) for job, _ in result.values()]
    _print_jobs(views, console)
    failed = [v for v in views if v.status in ("Failed", "Canceled", "NotResponding")]
    if not created and failed:  # "already submitted" must not read as success after a failure
        arms = ", ".join(f"{_arm_label(v)} ({v.status})" for v in failed)
        click.echo(f"error: the pair was submitted before and did not complete: {arms}. Its jobs "
                   f"cannot run again under the same names: `train logs {pair_id} --arm "
                   f"{failed[0].arm}` shows why; `train submit --force` submits a new pair",
                   err=True)
        sys.exit(EXIT_FAILED)
    console.print(f"follow it (with the same --stack or --outputs-file): train status {pair_id}"
                  f" | train logs {pair_id} --arm control | train cancel {pair_id}")
    if wait_:
        _wait(pair, pair_id, [v.name for v in views], console, poll_seconds)


def _print_jobs(views, console) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False)
    for col in ("arm", "job", "status"):
        table.add_column(col)
    for v in views:  # the service's strings as text: a `[/x]` in a tag is not rich markup
        table.add_row(Text(_arm_label(v)), Text(v.name), Text(str(v.status)))
    console.print(table)
    for v in views:  # whole, on their own lines: copied or clicked, never truncated
        if v.studio_url:
            console.print(f"{_arm_label(v)}: {v.studio_url}", overflow="ignore", crop=False,
                          markup=False)


def _arm_label(v) -> str:
    return v.arm if v.replicate is None else f"{v.arm} r{v.replicate}"


def _wait(pair, pair_id: str, names: list[str], console, poll_seconds: float) -> None:
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
                final = pair.wait(names, lambda s: live.update(render(s)), poll_seconds)
        else:
            final = pair.wait(names, changed, poll_seconds)
    except KeyboardInterrupt:  # the pair's id, not a replicate's: cancel must reach them all
        console.print(f"stopped following; the jobs keep running: `train status {pair_id}`, "
                      f"`train cancel {pair_id}` (with the same --stack / --outputs-file)")
        exit_interrupted()
    except AzureError as e:  # a login that expired during a long wait, a deleted job...
        from training.azureml.backend import _reason

        click.echo(f"error: following stopped ({_reason(e)}); the jobs were submitted and keep "
                   f"running: `train status {pair_id}`, `train cancel {pair_id}` (with the same "
                   "--stack / --outputs-file)", err=True)
        sys.exit(EXIT_FAILED)
    bad = {n: s for n, s in final.items() if s != "Completed"}
    if bad:
        console.print("not completed: " + ", ".join(f"{n} ({s})" for n, s in bad.items())
                      + "; `train logs PAIR --arm ARM` shows why")
        sys.exit(EXIT_FAILED)
    console.print("both arms completed")


COMMANDS = [submit]
