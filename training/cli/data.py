"""`train data validate` and `train data upload`: the data before money is spent on it, and into
the workspace. The report goes to stdout (`--format json`: one object); progress to stderr."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import click

from training.cli.common import (
    azure_client,
    diagnostics,
    emit_json,
    format_option,
    note,
    print_warnings,
    results,
    stack_options,
)
from training.cli.interrupts import interruptible
from training.errors import EXIT_BAD_INPUT, BadInput, Failed, exit_interrupted

DEFAULT_CONFIG = Path("experiments/paired-comments.yaml")


@click.group()
def data():
    """Check training data before spending money on it; upload it to the workspace."""


def report_json(report, **extra) -> dict:
    return {"ok": report.ok, "rows": report.rows, "problems": report.problems,
            "warnings": report.warnings, "files": [asdict(f) for f in report.files], **extra}


@data.command("validate")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="Take the tokenizer and max sequence length from this experiment file, and "
                   "check it as `train run` would (base model pinned, settings against this "
                   "machine and the model); without PATHS, its data files are checked.")
@click.option("--base-model", default=None,
              help="Tokenizer to count tokens with: hub id, path or tiny-llama "
                   "[default: the config's base_model, else tiny-llama].")
@click.option("--max-seq-length", type=click.IntRange(min=1), default=None,
              help="Flag examples longer than this many tokens [default: the config's].")
@click.option("--no-tokenizer", is_flag=True, help="Check structure only (fastest).")
@format_option("table", "json")
def data_validate(paths, config_path, base_model, max_seq_length, no_tokenizer, fmt):
    """Validate chat, prompt/completion or text JSONL files.

    Every bad line is reported as PATH:LINE: what is wrong, and the exit code is 2 if there is
    any; otherwise a summary of rows, format and token lengths is printed.
    """
    from training import data as data_mod
    from training.experiment.config import load_config
    from training.plan import prepare as prep

    if not paths and not config_path:
        raise click.UsageError("give PATHS to check, or --config (its data files)")
    console = diagnostics()
    show = (lambda report: None) if fmt == "json" else (
        lambda report: data_mod.print_report(report, results()))
    try:
        with interruptible():
            cfg = load_config(config_path) if config_path else None
            if cfg and max_seq_length is not None:  # the option wins over the file's
                cfg = cfg.model_copy(update={"training": cfg.training.model_copy(
                    update={"max_seq_length": max_seq_length})})
            if max_seq_length is None and cfg:
                max_seq_length = cfg.training.max_seq_length
            if cfg and not paths and not base_model and not no_tokenizer:
                _validate_config(cfg, console, show, fmt)
                return
            tokenizer = None
            if not no_tokenizer:
                tokenizer = prep.counting_tokenizer(base_model, cfg, note(console))
            files = list(paths) or list(prep.data_files(cfg).values())
            report = data_mod.validate_files(
                files, tokenizer=tokenizer, max_seq_length=max_seq_length,
                long_examples=cfg.training.long_examples if cfg else "error")
            if fmt == "json":
                emit_json(report_json(report))
            show(report)
            if cfg and report.ok and not no_tokenizer:
                prep.preflight_here(cfg)
    except KeyboardInterrupt:
        console.print("interrupted", highlight=False)
        exit_interrupted()
    if not report.ok:
        sys.exit(EXIT_BAD_INPUT)  # every problem is in the report, said once


def _validate_config(cfg, console, show, fmt) -> None:
    """`data validate --config` alone: every check of `train run`, nothing started."""
    from training.experiment.base_model import describe
    from training.experiment.config import ARMS
    from training.local.start import memory_check
    from training.plan import prepare as prep

    try:
        ready = prep.prepare(cfg, on_note=note(console))
    except prep.NotReady as e:
        if e.report is None:
            raise
        if fmt == "json":
            emit_json(report_json(e.report))
        show(e.report)
        sys.exit(EXIT_BAD_INPUT)  # every problem is in the report, said once
    memory = []
    memory_check(ready.cfg, len(ARMS), memory.append)  # as `train run` would plan both arms
    if fmt == "json":
        emit_json(report_json(ready.report, base_model=describe(ready.pinned),
                              warnings_config=ready.warnings, notes=memory))
        return
    show(ready.report)
    print_warnings(ready.warnings, console)
    results().print(f"base model: {describe(ready.pinned)}", highlight=False)
    for text in memory:
        console.print(f"note: {text}", highlight=False)


@data.command("upload")
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
    from training.azureml.upload import digests
    from training.experiment.config import load_config
    from training.plan import prepare as prep

    console = diagnostics()
    cfg = load_config(config_path)
    files = prep.data_files(cfg)
    prep.check_files(files)
    tokenizer = None if no_tokenizer else prep.counting_tokenizer(None, cfg, note(console))
    report = data_mod.validate_files(list(files.values()), tokenizer=tokenizer,
                                     max_seq_length=cfg.training.max_seq_length,
                                     long_examples=cfg.training.long_examples)
    data_mod.print_report(report, console)
    if not report.ok:
        raise BadInput("the data is not valid: nothing was uploaded")
    # an A/A pair may be meant, but it is more often a copy-paste slip in the experiment file
    print_warnings(data_mod.same_data_warnings(dict(zip(files, report.files, strict=True))),
                   console)
    roles = [r for r in files if r in outputs.data_assets]
    if "eval" in files and "eval" not in outputs.data_assets:
        console.print("[yellow]warning:[/] the stack has no `eval` data asset (evalAsset, "
                      f"`pulumi up`): {files['eval']} is not uploaded, and the jobs evaluate each "
                      "arm on its own holdout")
    if "eval" in outputs.data_assets and "eval" not in files:
        console.print("[yellow]warning:[/] the stack has an `eval` data asset but the experiment "
                      "file names no `eval` file: the jobs read whatever its blob holds")
    _upload(outputs, {role: digests(files[role]) for role in roles}, console)


def _upload(outputs, local: dict, console) -> None:
    from training.azureml.backend import default_credential
    from training.azureml.upload import (
        NEW_DATA_HINT,
        Uploader,
        resolve_targets,
        same_blob_for_different_files,
    )

    obj = click.get_current_context().obj or {}
    client = azure_client(outputs)
    targets = resolve_targets(client, outputs, list(local))
    if problems := same_blob_for_different_files(targets, local):
        raise BadInput("; ".join(problems) + " (set distinct controlDataPath/experimentDataPath)")
    uploader = Uploader(obj.get("azure_credential") or default_credential(),
                        transport=obj.get("blob_transport"))
    states = {role: uploader.state(targets[role], local[role]) for role in local}
    different = [role for role, s in states.items() if s == "different"]
    if different:
        raise Failed("\n".join(
            [f"{targets[r].url} ({targets[r].asset}) already holds other bytes than "
             f"{local[r].path}" for r in different]
            + [f"  nothing was uploaded: {NEW_DATA_HINT}"]))
    out, done = results(), set()
    for role, state in states.items():
        t, f = targets[role], local[role]
        if state == "same" or t.url in done:
            out.print(f"{role}: {t.url} already holds {f.path} (sha256 {f.sha256[:12]}): skipped")
            continue
        uploader.upload(t, f)
        done.add(t.url)
        out.print(f"{role}: {f.path} -> {t.url} ({f.size:,} bytes, data asset {t.asset}); "
                  f"verified sha256 {f.sha256[:12]}")
