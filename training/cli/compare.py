"""`train compare`: the verdict on a pair, from the local MLflow store or the stack's workspace.

Registered on the `train` group by `training.cli`; `train run` prints the same verdict
(`print_verdict`) when both arms are done.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from training.cli.azure import _cli


@click.command()
@click.argument("pair", required=False)
@click.option("--tracking-uri", default=None,
              help="MLflow store [default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db].")
@click.option("--stack", default=None, help="Read the runs from this Pulumi stack's workspace.")
@click.option("--outputs-file", type=click.Path(path_type=Path), default=None,
              help="The stack outputs saved as JSON (instead of --stack).")
@click.option("--pulumi-dir", type=click.Path(path_type=Path), default=Path("."),
              show_default=True, help="With --stack: the folder that holds Pulumi.yaml.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]),
              default="table", show_default=True)
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Also write the loss curves and per-example differences to this PNG.")
def compare(pair, tracking_uri, stack, outputs_file, pulumi_dir, fmt, plot_path):
    """The verdict on PAIR: fairness, health of each arm, paired statistics, success criteria.

    PAIR is a pair id (or the parent id of seed replicates) as `train run` or `train submit`
    printed it; without it, the recent pairs are listed. Exit 0 when the pair is fair, finished
    and meets every success criterion; 1 when not; 2 for bad input (no such pair or arm).
    """
    if sum(x is not None for x in (tracking_uri, stack, outputs_file)) > 1:
        _cli().bad_input("pass at most one of --tracking-uri, --stack, --outputs-file")
    if plot_path is not None:
        _check_plot_path(plot_path, pair)
    from training.verdict.store import PAIR_RE

    if pair is not None and not PAIR_RE.match(pair):  # before any request
        _cli().bad_input(f"{pair!r} is not a pair id (letters, digits, '.', '_', '-')")
    uri, outputs = _compare_uri(tracking_uri, stack, outputs_file, pulumi_dir)
    if pair is None:
        _list_pairs(uri, fmt)
        return
    sys.exit(print_verdict(uri, pair, fmt, plot_path, outputs=outputs))


def _check_plot_path(plot_path: Path, pair) -> None:
    """--plot, before the (slow) store queries: a PNG whose folder can be written or made
    (a missing one is made when the figure is written)."""
    from training.experiment.paths import dir_problem

    if pair is None:
        _cli().bad_input("--plot draws one pair: train compare PAIR --plot FILE.png")
    if plot_path.suffix.lower() != ".png":
        _cli().bad_input(f"--plot {plot_path}: the figure is written as PNG (name it *.png)")
    folder = plot_path.parent
    if problem := dir_problem(folder):
        _cli().bad_input(f"--plot {plot_path}: its folder {folder}: {problem}")
    if plot_path.exists() and not plot_path.is_file():
        _cli().bad_input(f"--plot {plot_path}: exists and is not a file")


def _compare_uri(tracking_uri, stack, outputs_file, pulumi_dir=Path(".")):
    """(tracking URI, stack outputs or None): the local store, or the stack's workspace's."""
    from training.experiment.tracking import tracking_uri as resolve_uri

    if stack is None and outputs_file is None:
        uri = resolve_uri(tracking_uri)
        db = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
        if db is not None and not Path(db).is_file():
            _cli().bad_input(f"no MLflow store at {db}: train a pair first (`train run`) or pass "
                      "--tracking-uri")
        return uri, None
    from training.experiment.stack import StackError, load_outputs

    try:
        outputs = load_outputs(stack, outputs_file, pulumi_dir)
    except StackError as e:
        _cli().bad_input(str(e))
    from training.cli.azure import _azure_errors, _client

    @_azure_errors  # a login problem exits 2, a failed request 1, each as one line
    def workspace_uri() -> str:
        return _client(outputs).workspaces.get(outputs.workspace_name).mlflow_tracking_uri

    return workspace_uri(), outputs


def _list_pairs(uri: str, fmt: str) -> None:
    import json

    from training.verdict.store import CompareError, recent_pairs

    try:
        pairs = recent_pairs(uri)
    except CompareError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    if fmt == "json":
        click.echo(json.dumps(pairs, indent=2))
        return
    from training.experiment.tracking import redacted

    if not pairs:
        click.echo(f"no pairs in {redacted(uri)}")
        return
    click.echo(f"recent pairs in {redacted(uri)} (train compare PAIR for the verdict):")
    for p in pairs:
        arms = "  ".join(f"{a}: {'/'.join(s.lower() for s in st) or '-'}"
                         for a, st in p["arms"].items())
        click.echo(f"  {p['pair_id']:<40} {p['name']:<28} {p['started']}  {arms}")


def print_verdict(uri: str, pair: str, fmt: str, plot_path: Path | None = None, console=None,
             outputs=None) -> int:
    """Print the verdict of a pair; returns its exit code (2 for bad input, printed)."""
    import json

    from training.verdict import render as compare_render
    from training.verdict.compare import compare, example_diffs
    from training.verdict.store import CompareError

    try:
        report, runs = compare(uri, pair, outputs=outputs)
    except CompareError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    if plot_path is not None:
        from training.verdict.plot import plot

        try:
            plot(report, runs, example_diffs(runs), plot_path)
        except OSError as e:
            click.echo(f"error: --plot {plot_path}: cannot write it ({e.strerror or e})",
                       err=True)
            return 2
    if fmt == "json":
        click.echo(json.dumps(report, indent=2))
    elif fmt == "markdown":
        click.echo(compare_render.markdown(report))
    else:
        compare_render.print_table(report, console or _stdout_console())
    if plot_path is not None:
        click.echo(f"plot: {plot_path}", err=True)
    return report["verdict"]["exit_code"]


def _stdout_console():
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, soft_wrap=True, width=120)
    return console


COMMANDS = [compare]
