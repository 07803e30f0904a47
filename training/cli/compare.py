"""`train compare`: the verdict on a pair, from the local MLflow store or the stack's workspace,
on stdout (`--format json | markdown` for scripts and pull requests); `train run` prints the same
verdict (training.cli.common.print_verdict) when both arms are done."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from training.cli.common import azure_client, emit_json, print_verdict
from training.errors import BadInput


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
    from training.experiment.pair import check_pair_id

    if sum(x is not None for x in (tracking_uri, stack, outputs_file)) > 1:
        raise BadInput("pass at most one of --tracking-uri, --stack, --outputs-file")
    if plot_path is not None:
        _check_plot_path(plot_path, pair)
    if pair is not None:  # before any request
        check_pair_id(pair, "PAIR")
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
        raise BadInput("--plot draws one pair: train compare PAIR --plot FILE.png")
    if plot_path.suffix.lower() != ".png":
        raise BadInput(f"--plot {plot_path}: the figure is written as PNG (name it *.png)")
    folder = plot_path.parent
    if problem := dir_problem(folder):
        raise BadInput(f"--plot {plot_path}: its folder {folder}: {problem}")
    if plot_path.exists() and not plot_path.is_file():
        raise BadInput(f"--plot {plot_path}: exists and is not a file")


def _compare_uri(tracking_uri, stack, outputs_file, pulumi_dir=Path(".")):
    """(tracking URI, stack outputs or None): the local store, or the stack's workspace's."""
    from training.experiment.stack import load_outputs
    from training.experiment.tracking import tracking_uri as resolve_uri

    if stack is None and outputs_file is None:
        uri = resolve_uri(tracking_uri)
        db = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
        if db is not None and not Path(db).is_file():
            raise BadInput(f"no MLflow store at {db}: train a pair first (`train run`) or pass "
                           "--tracking-uri")
        return uri, None
    outputs = load_outputs(stack, outputs_file, pulumi_dir)
    # a login problem exits 2, a failed request 1, each as one line (the translator)
    return azure_client(outputs).workspaces.get(outputs.workspace_name).mlflow_tracking_uri, outputs


def _list_pairs(uri: str, fmt: str) -> None:
    from training.experiment.tracking import redacted
    from training.verdict.store import recent_pairs

    pairs = recent_pairs(uri)
    if fmt == "json":
        emit_json({"tracking_uri": redacted(uri), "pairs": pairs})
        return
    if not pairs:
        click.echo(f"no pairs in {redacted(uri)}")
        return
    click.echo(f"recent pairs in {redacted(uri)} (train compare PAIR for the verdict):")
    for p in pairs:
        arms = "  ".join(f"{a}: {'/'.join(s.lower() for s in st) or '-'}"
                         for a, st in p["arms"].items())
        click.echo(f"  {p['pair_id']:<40} {p['name']:<28} {p['started']}  {arms}")
