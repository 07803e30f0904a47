"""`train data upload` and `train register`: the data going into the workspace, the models coming
out of a pair.

Registered on the `train` group (and `upload` on its `data` group) by `training.cli`. Checks run
before the first request: bad input is exit 2, a refused or failed request exit 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from training.cli_azure import (
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
    from training import prepare as prep
    from training.upload import digests

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
                                     max_seq_length=cfg.training.max_seq_length)
    data_mod.print_report(report, console)
    if not report.ok:
        click.echo("error: the data is not valid: nothing was uploaded", err=True)
        sys.exit(EXIT_BAD_INPUT)

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
    from training.upload import (
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
            from training.upload import NEW_DATA_HINT

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


COMMANDS: list = []
DATA_COMMANDS = [data_upload]
