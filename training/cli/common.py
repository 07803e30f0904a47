"""What every command shares: the two consoles (results on stdout, diagnostics on stderr), the one
error translator, the stack options and the Azure ML client factory, and small printers.

Nothing heavy is imported here: `train --help` imports this module.
"""

from __future__ import annotations

import os
import sys
from functools import wraps
from pathlib import Path

import click

from training.errors import BadInput, Failed, TrainError, exit_interrupted

# -------------------------------------------------------------------------------------- consoles


def _console(stderr: bool):
    from rich.console import Console

    # soft_wrap: a long "path:line: problem" stays one line (greppable, clickable) when piped;
    # piped output gets room for a table rather than rich's 80-column default.
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, highlight=False, soft_wrap=True, width=120)
    return console


def diagnostics():
    """stderr: progress, notes, warnings, errors. Spinners and live bars only on a terminal."""
    return _console(stderr=True)


def results():
    """stdout: what a command produced (tables, verdicts, pair ids, paths written)."""
    return _console(stderr=False)


def emit_json(data) -> None:
    """`--format json`: one strict JSON object on stdout (NaN as null) and nothing else there."""
    from training.strict_json import dumps

    click.echo(dumps(data, indent=2, default=str))


def format_option(*choices: str, default: str = "table"):
    return click.option("--format", "fmt", type=click.Choice(list(choices)), default=default,
                        show_default=True,
                        help="table: for people; json: one JSON object on stdout, for scripts.")


def print_warnings(warnings, console) -> None:
    for w in warnings:
        console.print(f"warning: {w}", style="yellow", highlight=False, markup=False)


def note(console):
    """A callback that prints `note: TEXT` on `console` (the domain's on_note)."""
    return lambda text: console.print(f"note: {text}", highlight=False, markup=False)


# ---------------------------------------------------------------------------------------- errors
def say_error(error: TrainError) -> int:
    """`error: MESSAGE` on stderr, one line per line of the message; returns its exit code."""
    click.echo(f"error: {error}", err=True)
    return error.exit_code


def fail(error: TrainError):
    """The one way a command ends on an error: `error: MESSAGE` on stderr, the error's exit code."""
    sys.exit(say_error(error))


def translate(error: BaseException) -> TrainError | None:
    """A service's error as one of ours, or None. Only SDKs already imported are asked: a
    command that never imported azure or openai cannot have raised their errors."""
    if "azure.core.exceptions" in sys.modules:
        from azure.core.exceptions import AzureError, ClientAuthenticationError

        if isinstance(error, ClientAuthenticationError):
            first = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            return BadInput(f"cannot authenticate to Azure ({first})\n  log in with `az login` "
                            "(or run where a managed identity is available)")
        if isinstance(error, AzureError):
            from training.azureml.backend import failure_reason

            return Failed(f"Azure ML request failed: {failure_reason(error)}")
    if "openai" in sys.modules:
        import openai

        from training.hosted.client import describe_error

        if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
            return BadInput(f"the service refused the credentials ({describe_error(error)})")
        if isinstance(error, openai.APIError):
            return Failed(f"request failed ({describe_error(error)})")
    return None


class TrainGroup(click.Group):
    """The `train` group: every command runs inside the one error translator."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # a command without its own handler: 130, not click's "Aborted!"
            click.echo(f"interrupted: `train {ctx.invoked_subcommand}` stopped; what it did is "
                       "printed above, nothing after it", err=True)
            exit_interrupted()
        except TrainError as e:
            fail(e)
        except Exception as e:
            ours = translate(e)
            if ours is None:
                raise
            fail(ours)


# ----------------------------------------------------------------------------------- Azure ML
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
        from training.experiment.stack import load_outputs

        _check_pair_argument(kwargs.get("pair_id"))  # instant: before `pulumi stack output`
        return f(*args, outputs=load_outputs(stack, outputs_file, pulumi_dir), **kwargs)

    return wrapper


def _check_pair_argument(pair_id: str | None) -> None:
    """The command's PAIR argument or --pair-id option, by the one rule; a sweep's job name is
    left to the commands that take one (status, cancel)."""
    from training.azureml.sweep import SWEEP_JOB
    from training.experiment.pair import check_pair_id

    if pair_id is None or SWEEP_JOB.match(pair_id):
        return
    param = next((p for p in click.get_current_context().command.params
                  if p.name == "pair_id"), None)
    check_pair_id(pair_id, "PAIR" if isinstance(param, click.Argument) else "--pair-id")


def azure_client(outputs):
    """The MLClient; tests hand a fake transport and credential through click's context object."""
    from training.azureml.backend import connect

    obj = click.get_current_context().obj or {}
    return connect(outputs, credential=obj.get("azure_credential"),
                   transport=obj.get("azure_transport"))


def checked_pair_id(pair_id: str, what: str = "PAIR") -> str:
    """A PAIR argument that cannot name a pair is bad input before any request; a sweep's job
    name is told apart (its commands take it)."""
    from training.azureml.sweep import SWEEP_JOB
    from training.experiment.pair import check_pair_id

    if SWEEP_JOB.match(pair_id):
        raise BadInput(f"{pair_id} is a sweep's job, not a pair: `train status {pair_id}` "
                  f"shows it and its studio link, `train cancel {pair_id}` stops it")
    return check_pair_id(pair_id, what)


def pair_jobs(pair, pair_id: str):
    """The Azure ML jobs of a pair (training.azureml.backend.AzurePair), or BadInput naming the
    recent pairs."""
    jobs = pair.find(pair_id)
    if not jobs:
        known = list(pair.recent_pairs())[:10]
        hint = ("recent pairs: " + ", ".join(known)) if known else "no pairs in this workspace"
        raise BadInput(f"no pair {pair_id!r} in this workspace ({hint})")
    return jobs


def arm_label(view) -> str:
    return view.arm if view.replicate is None else f"{view.arm} r{view.replicate}"


def jobs_json(views) -> list[dict]:
    return [{"name": v.name, "arm": v.arm, "replicate": v.replicate, "status": v.status,
             "studio_url": v.studio_url} for v in views]


def print_jobs(views, console) -> None:
    """Azure ML jobs as a table, then each studio link whole on its own line."""
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False)
    for col in ("arm", "job", "status"):
        table.add_column(col)
    for v in views:  # the service's strings as text: a `[/x]` in a tag is not rich markup
        table.add_row(Text(arm_label(v)), Text(v.name), Text(str(v.status)))
    console.print(table)
    for v in views:  # whole, on their own lines: copied or clicked, never truncated
        if v.studio_url:
            console.print(f"{arm_label(v)}: {v.studio_url}", overflow="ignore", crop=False,
                          markup=False)


# ------------------------------------------------------------------------------------ budgets
def enforce_budget(problems: list[str], budget_usd: float, allow_over_budget: bool, console,
                   refusal: str) -> None:
    """The budget guards' end: within budget, submitted anyway when allowed, else exit 1 with
    every problem and what to change (`refusal`)."""
    if not problems:
        console.print(f"within budget_usd {budget_usd:,.2f}")
        return
    if allow_over_budget:
        console.print("[yellow]over budget, submitted anyway (--allow-over-budget):[/] "
                      + "; ".join(problems))
        return
    raise Failed("; ".join(problems) + f". {refusal}")


def check_submit_options(dry_run: bool, out_dir, wait_: bool, pair_id, force: bool) -> None:
    """`train submit`'s options that exclude each other, on any backend: instant, before any
    hub lookup or request."""
    if dry_run != (out_dir is not None):
        raise BadInput("--dry-run and --out go together: --dry-run --out DIR")
    if dry_run and wait_:
        raise BadInput("--wait follows submitted jobs: it does nothing with --dry-run")
    if pair_id is not None and force:
        raise BadInput("--pair-id and --force exclude each other (--force makes a new pair id)")


def out_option(value: str | None) -> Path | None:
    """--out as given: an empty string is not the current folder."""
    if value is not None and not value.strip():
        raise click.BadParameter("empty; give a folder, e.g. --out jobs/", param_hint="--out")
    return None if value is None else Path(value)


# ------------------------------------------------------------------------------------ verdict
def print_verdict(uri: str, pair: str, fmt: str, plot_path: Path | None = None,
                  outputs=None) -> int:
    """The verdict of a pair on stdout (`train compare`, and `train run` when both arms are
    done); returns its exit code. A pair that cannot be read is said on stderr (its code)."""
    from training.verdict import render
    from training.verdict.compare import compare, example_diffs
    from training.verdict.store import CompareError

    try:
        report, runs = compare(uri, pair, outputs=outputs)
    except CompareError as e:
        return say_error(e)
    if plot_path is not None:
        from training.verdict.plot import plot

        try:
            plot(report, runs, example_diffs(runs), plot_path)
        except OSError as e:
            return say_error(BadInput(f"--plot {plot_path}: cannot write it "
                                      f"({e.strerror or e})"))
    if fmt == "json":
        emit_json(report)
    elif fmt == "markdown":
        click.echo(render.markdown(report))
    else:
        render.print_table(report, results())
    if plot_path is not None:
        click.echo(f"plot: {plot_path}", err=True)
    return report["verdict"]["exit_code"]
