"""`train register`: both arms' final models of a pair into a model registry (the workspace's on
Azure ML: training.azureml.register; MLflow's locally: training.local.register), tagged with the
pair. What was registered goes to stdout (`--format json`: one object)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from training.cli.common import (
    azure_client,
    checked_pair_id,
    diagnostics,
    emit_json,
    format_option,
    pair_jobs,
    results,
)
from training.errors import BadInput, Failed


@click.command()
@click.argument("pair_id")
@click.option("--stack", default=None, metavar="NAME",
              help="Register in this Pulumi stack's Azure ML workspace (runs `pulumi stack "
                   "output`).")
@click.option("--outputs-file", type=click.Path(path_type=Path), default=None,
              help="The stack outputs saved as JSON, instead of --stack.")
@click.option("--pulumi-dir", type=click.Path(path_type=Path), default=Path("."),
              show_default=True, help="The folder that holds Pulumi.yaml.")
@click.option("--tracking-uri", default=None,
              help="Locally: the MLflow store whose model registry gets the models [default: "
                   "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db].")
@click.option("--output-dir", type=click.Path(path_type=Path), default=Path("runs"),
              show_default=True, help="Locally: the folder `train run` wrote the pair to.")
@click.option("--name", default=None,
              help="Models are NAME-control and NAME-experiment [default: the experiment's "
                   "name; on Azure the jobs' experiment].")
@click.option("--replicate", type=click.IntRange(min=0), default=None,
              help="With seed replicates: which one to register.")
@format_option("table", "json")
def register(pair_id, stack, outputs_file, pulumi_dir, tracking_uri, output_dir, name,
             replicate, fmt):
    """Register both arms' final models of PAIR, tagged with the pair.

    \b
    train register PAIR --stack dev           # Azure ML: the jobs' outputs, by reference
    train register PAIR                       # local: runs/PAIR/<arm>/model into MLflow's registry

    Models are NAME-control and NAME-experiment, each version tagged pair_id, arm, the final
    metrics (final_eval_loss, ...), the training data (data asset ids, or sha256 locally) and
    the pair's provenance. Both arms must have finished (exit 1 otherwise, nothing registered).
    Registering again adds no version: a model already tagged with this pair id is reported.
    """
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,240}", name):
        raise BadInput(f"--name {name!r}: letters, digits, - _ . (a model name)")
    checked_pair_id(pair_id)  # before any request, and before PAIR is joined to --output-dir
    if stack or outputs_file:
        if tracking_uri:
            raise BadInput("--tracking-uri is for local pairs; with --stack/--outputs-file the "
                           "models go to the workspace")
        from training.experiment.stack import load_outputs

        done = _register_azure(load_outputs(stack, outputs_file, pulumi_dir), pair_id, name,
                               replicate)
    else:
        done = _register_local(pair_id, tracking_uri, output_dir, name, replicate)
    registered = _print_registered(done, fmt)
    if fmt == "json":
        emit_json({"pair_id": pair_id, "models": registered})


def _print_registered(done, fmt: str) -> list[dict]:
    """Each arm as it is registered; if one fails after another was registered, say so (the
    same command again registers only what is missing)."""
    out, console, registered = results(), diagnostics(), []
    try:
        for r in done:
            registered.append({"arm": r.arm, "name": r.name, "version": r.version,
                               "created": r.created, "note": r.note})
            if fmt != "json":
                what = "registered" if r.created else "already registered (nothing new)"
                out.print(f"{r.arm}: {r.name} version {r.version}: {what}")
            if r.note:
                console.print(f"note: {r.note}", style="yellow", markup=False, highlight=False)
    except BaseException:
        if registered:
            console.print("[yellow]only part of the pair is registered[/]: run the same command "
                          "again to register the rest (nothing is registered twice)")
        raise
    return registered


def _register_azure(outputs, pair_id, name, replicate):
    from training.azureml import register as reg
    from training.azureml.backend import AzurePair
    from training.experiment import registry

    console = diagnostics()
    client = azure_client(outputs)
    jobs = pair_jobs(AzurePair(client), pair_id)
    obj = click.get_current_context().obj or {}
    uri: list = []
    notes: list[str] = []

    def metrics_for(job, arm):
        if not uri:
            uri.append(obj.get("mlflow_tracking_uri")
                       or client.workspaces.get(outputs.workspace_name).mlflow_tracking_uri)
        tags, _, note = registry.run_metrics(uri[0], job.name, pair_id, arm, job.experiment_name)
        if note:
            notes.append(f"{arm}: {note}")
        return tags, note

    models = reg.azure_models(jobs, pair_id, name, replicate, metrics_for)
    registry.check_names(models)
    for note in notes:
        console.print(f"[yellow]note:[/] final metrics not tagged: {note}")
    yield from reg.register_azure(client, models)


def _register_local(pair_id, tracking_uri, output_dir, name, replicate):
    from training.experiment import registry
    from training.experiment.tracking import redacted
    from training.experiment.tracking import tracking_uri as resolve_uri
    from training.local import register as reg

    models, manifest = reg.local_models(output_dir, pair_id, name, replicate)
    registry.check_names(models)
    uri = resolve_uri(tracking_uri)
    diagnostics().print(f"MLflow model registry: {redacted(uri)}")
    try:
        with registry.short_requests():  # a store that is down: seconds, not minutes of retries
            yield from reg.register_mlflow(uri, models, manifest.get("name"))
    except registry.NotFinished:
        raise
    except Exception as e:  # a bad URI, a store that is down: one line, not a traceback
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise Failed(redacted(f"MLflow model registry at {uri}: {first}")) from None
