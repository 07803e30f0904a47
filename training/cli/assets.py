"""`train data upload` and `train register`: the data going into the workspace, the models coming
out of a pair.

Registered on the `train` group (and `upload` on its `data` group) by `training.cli`. Checks run
before the first request: bad input is exit 2, a refused or failed request exit 1.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from training.cli.azure import (
    DEFAULT_CONFIG,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    _azure_errors,
    _cli,
    _client,
    stack_options,
)


# ----------------------------------------------------------------------------- data upload
@click.command("upload")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=DEFAULT_CONFIG,
              show_default=True, help="The experiment file: its arm and eval files go up.")
@click.option("--no-tokenizer", is_flag=True,
              help="Check the files' structure only, without the base model's tokenizer.")
@stack_options
def data_upload(config_path, no_tokenizer, outputs):
    """Upload the experiment's data files to the stack's data assets, checked before and after.

    \b
    train data upload --stack dev --config experiments/paired-comments.yaml

    The files are validated as `train data validate` does (exit 2 on bad data, nothing sent).
    Each file goes to the blob its data asset names (asked of the workspace), with your Azure
    identity (the storage account takes no keys), and is read back and compared (sha256) after
    the upload. A blob that already holds the same bytes is skipped; one that holds other bytes is
    refused (exit 1): a data asset version names fixed bytes, so new data gets a new version.
    """
    from training import data as data_mod
    from training.plan import prepare as prep
    from training.azureml.upload import digests

    cli = _cli()
    console = cli._console()
    cfg = cli._load(config_path)
    files = prep.data_files(cfg)
    try:
        prep.check_files(files)
    except prep.NotReady as e:
        cli.bad_input(str(e))
    tokenizer = None
    if not no_tokenizer:
        tokenizer = cli._exit_if_not_ready(lambda: cli._tokenizer_of(None, cfg, console), console)
    report = data_mod.validate_files(list(files.values()), tokenizer=tokenizer,
                                     max_seq_length=cfg.training.max_seq_length,
                                     long_examples=cfg.training.long_examples)
    data_mod.print_report(report, console)
    if not report.ok:
        click.echo("error: the data is not valid: nothing was uploaded", err=True)
        sys.exit(EXIT_BAD_INPUT)
    # an A/A pair may be meant, but it is more often a copy-paste slip in the experiment file
    cli._print_warnings(data_mod.same_data_warnings(dict(zip(files, report.files, strict=True))),
                        console)

    roles = [r for r in files if r in outputs.data_assets]
    if "eval" in files and "eval" not in outputs.data_assets:
        console.print("[yellow]warning:[/] the stack has no `eval` data asset (evalAsset, "
                      f"`pulumi up`): {files['eval']} is not uploaded, and the jobs evaluate each "
                      "arm on its own holdout")
    if "eval" in outputs.data_assets and "eval" not in files:
        console.print("[yellow]warning:[/] the stack has an `eval` data asset but the experiment "
                      "file names no `eval` file: the jobs read whatever its blob holds")
    local = {role: digests(files[role]) for role in roles}
    _upload(outputs, local, console)


@_azure_errors
def _upload(outputs, local: dict, console) -> None:
    from training.azureml.upload import (
        NotPermitted,
        Refused,
        TargetError,
        Uploader,
        resolve_targets,
        same_blob_for_different_files,
    )

    cli = _cli()
    obj = click.get_current_context().obj or {}
    client = _client(outputs)
    try:
        targets = resolve_targets(client, outputs, list(local))
    except TargetError as e:
        cli.bad_input(str(e))
    if problems := same_blob_for_different_files(targets, local):
        cli.bad_input("; ".join(problems) + " (set distinct controlDataPath/experimentDataPath)")
    uploader = Uploader(client._credential, transport=obj.get("blob_transport"))
    try:
        states = {role: uploader.state(targets[role], local[role]) for role in local}
        different = [role for role, s in states.items() if s == "different"]
        if different:
            from training.azureml.upload import NEW_DATA_HINT

            for role in different:
                t = targets[role]
                click.echo(f"error: {t.url} ({t.asset}) already holds other bytes than "
                           f"{local[role].path}", err=True)
            click.echo(f"  nothing was uploaded: {NEW_DATA_HINT}", err=True)
            sys.exit(EXIT_FAILED)
        done: set[str] = set()
        for role, state in states.items():
            t, f = targets[role], local[role]
            if state == "same" or t.url in done:
                console.print(f"{role}: {t.url} already holds {f.path} (sha256 "
                              f"{f.sha256[:12]}): skipped")
                continue
            uploader.upload(t, f)
            done.add(t.url)
            console.print(f"{role}: {f.path} -> {t.url} ({f.size:,} bytes, data asset "
                          f"{t.asset}); verified sha256 {f.sha256[:12]}")
    except NotPermitted as e:
        cli.bad_input(str(e))
    except Refused as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_FAILED)


# ----------------------------------------------------------------------------- register
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
def register(pair_id, stack, outputs_file, pulumi_dir, tracking_uri, output_dir, name,
             replicate):
    """Register both arms' final models of PAIR, tagged with the pair.

    \b
    train register PAIR --stack dev           # Azure ML: the jobs' outputs, by reference
    train register PAIR                       # local: runs/PAIR/<arm>/model into MLflow's registry

    Models are NAME-control and NAME-experiment, each version tagged pair_id, arm, the final
    metrics (final_eval_loss, ...), the training data (data asset ids, or sha256 locally) and
    the pair's provenance. Both arms must have finished (exit 1 otherwise, nothing registered).
    Registering again adds no version: a model already tagged with this pair id is reported.
    """
    cli = _cli()
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,240}", name):
        cli.bad_input(f"--name {name!r}: letters, digits, - _ . (a model name)")
    from training.cli.follow import _checked

    _checked(pair_id)  # before any request, and before PAIR is joined to --output-dir as a path
    if stack or outputs_file:
        if tracking_uri:
            cli.bad_input("--tracking-uri is for local pairs; with --stack/--outputs-file the "
                          "models go to the workspace")
        from training.experiment.stack import StackError, load_outputs

        try:
            outputs = load_outputs(stack, outputs_file, pulumi_dir)
        except StackError as e:
            cli.bad_input(str(e))
        _register_azure(outputs, pair_id, name, replicate)
    else:
        _register_local(pair_id, tracking_uri, output_dir, name, replicate)


def _print_registered(done, console) -> None:
    """Each arm as it is registered; if one fails after another was registered, say so (the
    same command again registers only what is missing)."""
    printed = 0
    try:
        for r in done:
            what = "registered" if r.created else "already registered (nothing new)"
            console.print(f"{r.arm}: {r.name} version {r.version}: {what}")
            if r.note:
                console.print(f"note: {r.note}", style="yellow", markup=False, highlight=False)
            printed += 1
    except BaseException:
        if printed:
            console.print("[yellow]only part of the pair is registered[/]: run the same command "
                          "again to register the rest (nothing is registered twice)")
        raise


@_azure_errors
def _register_azure(outputs, pair_id, name, replicate) -> None:
    from training.azureml import register as reg
    from training.azureml.backend import AzurePair
    from training.cli.follow import _pair_jobs

    cli = _cli()
    console = cli._console()
    client = _client(outputs)
    jobs = _pair_jobs(AzurePair(client), pair_id)
    obj = click.get_current_context().obj or {}
    uri: list = []
    notes: list[str] = []

    def metrics_for(job, arm):
        if not uri:
            uri.append(obj.get("mlflow_tracking_uri")
                       or client.workspaces.get(outputs.workspace_name).mlflow_tracking_uri)
        tags, _, note = reg.run_metrics(uri[0], job.name, pair_id, arm, job.experiment_name)
        if note:
            notes.append(f"{arm}: {note}")
        return tags, note

    try:
        models = reg.azure_models(jobs, pair_id, name, replicate, metrics_for)
        reg.check_names(models)
    except reg.BadPair as e:
        cli.bad_input(str(e))
    except reg.NotFinished as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_FAILED)
    for note in notes:
        console.print(f"[yellow]note:[/] final metrics not tagged: {note}")
    _print_registered(reg.register_azure(client, models), console)


def _register_local(pair_id, tracking_uri, output_dir, name, replicate) -> None:
    from training.azureml import register as reg
    from training.experiment.tracking import tracking_uri as resolve_uri

    cli = _cli()
    console = cli._console()
    try:
        models, manifest = reg.local_models(output_dir, pair_id, name, replicate)
        reg.check_names(models)
    except reg.BadPair as e:
        cli.bad_input(str(e))
    except reg.NotFinished as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_FAILED)
    from training.experiment.tracking import redacted

    uri = resolve_uri(tracking_uri)
    console.print(f"MLflow model registry: {redacted(uri)}")
    try:
        with reg._short_requests():  # a store that is down: seconds, not minutes of retries
            _print_registered(reg.register_mlflow(uri, models, manifest.get("name")), console)
    except reg.NotFinished as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_FAILED)
    except Exception as e:  # a bad URI, a store that is down: one line, not a traceback
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        click.echo(redacted(f"error: MLflow model registry at {uri}: {first}"), err=True)
        sys.exit(EXIT_FAILED)


COMMANDS = [register]
DATA_COMMANDS = [data_upload]
