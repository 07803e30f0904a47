"""`train`: the command line of paired fine-tuning.

Thin by design: each command parses its options and calls the module that does the work. torch,
transformers, azure and mlflow are imported inside commands, so `train --help` answers at once.

Exit codes: 0 success; 1 a job or check failed; 2 bad input (config, data, arguments), reported
before anything is trained or submitted.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click

from training.experiment.config import ARMS, ConfigError, ExperimentConfig, load_config
from training.errors import EXIT_BAD_INPUT, EXIT_FAILED, exit_interrupted
from training.interrupts import LateStop, interruptible


def _console():
    from rich.console import Console

    # soft_wrap: a long "path:line: problem" stays one line (greppable, clickable) when piped;
    # piped output gets room for a table rather than rich's 80-column default.
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=True, highlight=False, soft_wrap=True, width=120)
    return console


def bad_input(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="paired-finetune")
def main():
    """Paired LLM fine-tuning: a control and an experiment model from the same base, everything
    else identical, tracked in MLflow and compared.

    \b
    Locally, no cloud:
      train data validate examples/data/*.jsonl
      train run --config experiments/local.yaml
    """


# ----------------------------------------------------------------------------- data
@main.group()
def data():
    """Check training data before spending money on it; upload it to the workspace."""


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
def data_validate(paths, config_path, base_model, max_seq_length, no_tokenizer):
    """Validate chat, prompt/completion or text JSONL files.

    Every bad line is reported as PATH:LINE: what is wrong, and the exit code is 2 if there is
    any; otherwise a summary of rows, format and token lengths is printed.
    """
    from training import data as data_mod
    from training.plan import prepare as prep

    if not paths and not config_path:
        raise click.UsageError("give PATHS to check, or --config (its data files)")
    console = _console()
    try:
        with interruptible():
            cfg = _load(config_path) if config_path else None
            if cfg and max_seq_length is not None:  # the option wins over the file's
                cfg = cfg.model_copy(update={"training": cfg.training.model_copy(
                    update={"max_seq_length": max_seq_length})})
            if max_seq_length is None and cfg:
                max_seq_length = cfg.training.max_seq_length
            if cfg and not paths and not base_model and not no_tokenizer:
                _exit_if_not_ready(lambda: _validate_config(cfg, console), console)
                return
            tokenizer = None
            if not no_tokenizer:
                tokenizer = _exit_if_not_ready(lambda: _tokenizer_of(base_model, cfg, console),
                                               console)
            files = list(paths) or list(prep.data_files(cfg).values())
            report = data_mod.validate_files(
                files, tokenizer=tokenizer, max_seq_length=max_seq_length,
                long_examples=cfg.training.long_examples if cfg else "error")
            data_mod.print_report(report, console)
            if cfg and report.ok and not no_tokenizer:
                _exit_if_not_ready(lambda: _preflight(cfg, console), console)
    except KeyboardInterrupt:
        console.print("interrupted", highlight=False)
        exit_interrupted()
    if not report.ok:
        sys.exit(EXIT_BAD_INPUT)


def _validate_config(cfg, console) -> None:
    """`data validate --config` alone: every check of `train run`, nothing started."""
    from training import data as data_mod
    from training.plan import prepare as prep

    try:
        ready = prep.prepare(cfg, on_note=lambda t: console.print(f"note: {t}", highlight=False))
    except prep.NotReady as e:
        if e.report is not None:
            data_mod.print_report(e.report, console)
        raise
    data_mod.print_report(ready.report, console)
    _print_warnings(ready.warnings, console)
    console.print(f"base model: {_describe(ready.pinned)}", highlight=False)
    _check_memory(ready.cfg, len(ARMS), console)  # as `train run` would plan both arms


def _tokenizer_of(base_model, cfg, console):
    from training.plan import prepare as prep

    if base_model:
        return prep.tokenizer_for_name(base_model)
    if cfg is None:
        return prep.tokenizer_for_name("tiny-llama")
    return prep.pin_and_load_tokenizer(
        cfg, on_note=lambda t: console.print(f"note: {t}", highlight=False))[2]


def _preflight(cfg, console) -> None:
    from training.experiment import base_model
    from training.plan import preflight
    from training.plan import prepare as prep

    cfg = base_model.pin(cfg)[0]
    problems = preflight.problems(cfg, *base_model.load_reference(cfg))
    if problems:
        raise prep.NotReady("the experiment cannot run here", problems)


def _exit_if_not_ready(step, console):
    """Run a preparation step; NotReady -> its problems on the console and exit 2."""
    from training.plan.prepare import NotReady

    try:
        return step()
    except NotReady as e:
        bad_input(str(e))


def _print_warnings(warnings: list[str], console) -> None:
    for w in warnings:
        console.print(f"warning: {w}", style="yellow", highlight=False, markup=False)


def _describe(pinned) -> str:
    from training.experiment.base_model import describe

    return describe(pinned)


def _load(config_path: Path) -> ExperimentConfig:
    try:
        return load_config(config_path)
    except ConfigError as e:
        bad_input(str(e))


# ----------------------------------------------------------------------------- run
@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="The experiment file (YAML).")
@click.option("--output-dir", type=click.Path(path_type=Path), default=Path("runs"),
              show_default=True,
              help="Each pair goes to OUTPUT_DIR/PAIR_ID/ARM/ (replicates: OUTPUT_DIR/PAIR_ID/rK/ARM/).")
@click.option("--arm", "arm", type=click.Choice(ARMS), default=None,
              help="Run one arm only [default: both, in parallel].")
@click.option("--pair-id", default=None,
              help="Name the pair [default: derived from the config and both datasets' hashes, "
                   "so the same command resumes an interrupted pair].")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db].")
def run(config_path, output_dir, arm, pair_id, tracking_uri):
    """Run a pair on this machine: both arms in parallel, same recipe as on Azure ML.

    The data is validated first (nothing is trained on bad data). A finished arm is not trained
    again; an interrupted one resumes from its latest checkpoint. Ctrl-C or SIGTERM makes each arm
    write a checkpoint before this command exits.
    """
    console = _console()
    arms = [arm] if arm else list(ARMS)
    try:
        with interruptible():  # Ctrl-C or SIGTERM while preparing: exit 130, nothing started
            cfg, pair_id, pair_dir, resolved, uri, threads = _prepare_run(
                config_path, output_dir, arms, pair_id, tracking_uri, console)
    except KeyboardInterrupt:
        console.print("interrupted while preparing the pair: nothing was trained",
                      highlight=False)
        exit_interrupted()

    from training.local.backend import LocalPair, read_manifest
    from training.local.progress import PairProgress

    # Seed replicates: replicate k of both arms trains with seed + k, as pair PAIR_ID-rK in
    # PAIR_DIR/rK/; one replicate keeps the plain layout.
    n = cfg.training.replicates
    replicates = [(pair_id, pair_dir, 0)] if n == 1 else [
        (f"{pair_id}-r{k}", pair_dir / f"r{k}", k) for k in range(n)]
    failed = False
    late = LateStop()  # a Ctrl-C between pairs or after the last arm finished: noted, no traceback
    for rep_id, rep_dir, k in replicates:
        if n > 1:
            console.print(f"replicate {k + 1}/{n}: [bold]{rep_id}[/] "
                          f"(seed {cfg.training.seed + k})")
        with PairProgress(console, arms) as progress:
            pair = LocalPair(resolved, rep_dir, rep_id, arms, uri, on_event=progress.update,
                             replicate=k, parent_pair_id=pair_id, threads=threads,
                             data_sha256=read_manifest(pair_dir).get("data_sha256"))
            previous = {s: signal.signal(s, pair.stop)  # SIGHUP: the terminal closed
                        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
            try:
                states = pair.run()
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)
        progress.summary(states, rep_dir, rep_id)

        # a Ctrl-C after every arm finished changes nothing: they are reported finished
        if pair.interrupted or ((late.seen or pair.stopping) and k + 1 < n):
            console.print(f"interrupted: run the same command again to resume {pair_id}")
            exit_interrupted()
        late.seen = late.seen or pair.stopping
        failed = failed or pair.failed
    late.restore()
    if failed:
        sys.exit(EXIT_FAILED)
    if late.seen:
        console.print("stopped after every arm had finished: nothing was lost")
        return
    if arm is None and not os.environ.get("PAIRED_FINETUNE_NO_MLFLOW"):
        from training.cli.compare import print_verdict

        print_verdict(uri, pair_id, "table", console=console)
        console.print(f"again, with the figure: train compare {pair_id} --plot compare.png")


def _prepare_run(config_path, output_dir, arms, pair_id, tracking_uri, console):
    """Every check of `train run`, then the pair folder, its locks and the MLflow experiment.
    Bad input exits 2 here, before any arm starts."""
    from training.experiment import locks
    from training.plan import prepare as prep
    from training.local.backend import (
        LocalPair,
        PairMismatch,
        check_pair,
        pair_id_for,
        prepare_pair,
        read_manifest,
    )
    from training.experiment.base_model import manifest_entry
    from training.data import print_report
    from training.experiment.paths import dir_problem, inside, name_problem
    from training.experiment.tracking import tracking_uri as resolve_uri

    if pair_id is not None and (problem := name_problem(pair_id)):
        bad_input(f"--pair-id {pair_id!r}: {problem}")
    if problem := dir_problem(output_dir):
        bad_input(f"--output-dir {output_dir}: {problem}")
    cfg = _load(config_path)
    if not console.is_terminal:  # no spinner in a log: say what the next seconds are
        console.print(f"preparing {cfg.base_model} and validating data", highlight=False)
    try:
        # tiny-llama is built here, once, before the two arms would race for it
        with console.status(f"preparing {cfg.base_model} and validating data") as status:
            ready = prep.prepare(
                cfg, status=lambda text: status.update(text),
                on_note=lambda text: console.print(f"note: {text}", highlight=False))
    except prep.NotReady as e:
        if e.report is not None:
            print_report(e.report, console)
        bad_input(str(e))
    _print_warnings(ready.warnings, console)
    data_warnings = ready.report.warnings
    _print_warnings(data_warnings[:5], console)
    if len(data_warnings) > 5:
        console.print(f"... and {len(data_warnings) - 5} more data warnings (train data validate "
                      f"--config {config_path} lists them)", style="yellow", highlight=False)
    cfg = ready.cfg  # pinned: the revision is part of the pair id
    _check_memory(cfg, len(arms), console)
    pair_id = pair_id or pair_id_for(cfg, ready.hashes)
    pair_dir = output_dir / pair_id
    if pair_dir.is_symlink() and not inside(pair_dir, output_dir):
        bad_input(f"{pair_dir} is a symlink out of --output-dir {output_dir}: remove it or "
                  "choose another --pair-id")
    interruptible.check()  # a Ctrl-C that could not raise while preparing: nothing written yet
    uri = resolve_uri(tracking_uri)
    try:
        from training.experiment.tracking import ensure_experiment, redacted

        ensure_experiment(uri, cfg.name)
    except Exception as e:  # a bad URI, an unwritable sqlite file, a store that is down
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        bad_input(redacted(f"MLflow tracking URI {uri}: {first}"))
    n = cfg.training.replicates
    folders = [pair_dir] if n == 1 else [pair_dir / f"r{k}" for k in range(n)]
    try:
        check_pair(cfg, pair_dir, pair_id, ready.hashes)  # another experiment's folder: refuse
        for folder in folders:  # one writer per arm: refuse before anything is written
            LocalPair(pair_dir / "config.yaml", folder, pair_id, arms, "").lock_arms()
        from training.experiment.tracking import store_name

        try:
            first = read_manifest(pair_dir) if (pair_dir / "pair.json").is_file() else {}
        except ValueError:  # not JSON: check_pair has said what it thinks of it already
            first = {}
        if isinstance(first, dict) and first.get("tracking_store") not in (None, store_name(uri)):
            bad_input(f"pair {pair_id} logs its runs to {first['tracking_store']}, not "
                      f"{store_name(uri)}: pass that --tracking-uri (or $MLFLOW_TRACKING_URI) to "
                      "resume or see it, or train it anew with another --output-dir")
        resolved = prepare_pair(cfg, pair_dir, pair_id, ready.hashes,
                                extra={**manifest_entry(ready.pinned),
                                       "tracking_store": store_name(uri)})
    except locks.Busy as e:
        bad_input(f"{e}: wait for it to end, or stop it (Ctrl-C in its terminal)")
    except PairMismatch as e:
        bad_input(str(e))
    except OSError as e:
        bad_input(f"cannot write the pair folder {pair_dir}: {e.strerror or e}")
    console.print(f"pair [bold]{pair_id}[/] -> {pair_dir}   (MLflow: {redacted(uri)})")
    console.print(f"base model: {_describe(ready.pinned)}", highlight=False)
    threads = read_manifest(pair_dir)["threads_per_arm"]
    return cfg, pair_id, pair_dir, resolved, uri, threads


def _check_memory(cfg, arms: int, console) -> None:
    """The memory plan on this machine (training.memory): exit 2 with the figures and the
    cheapest change that fits when an arm cannot fit, before anything is written."""
    from training.plan.memory import ShapeUnknown, local_check

    try:
        check = local_check(cfg, arms)
    except ShapeUnknown as e:
        console.print(f"note: no memory plan: {e}", highlight=False)
        return
    if not check.fits:
        bad_input("the arm does not fit this machine's memory: nothing was trained\n"
                  + check.message())


# ----------------------------------------------------------------------------- Azure ML
from training.cli.azure import COMMANDS as _AZURE_COMMANDS  # noqa: E402 (needs the helpers above)
from training.cli.compare import COMMANDS as _COMPARE_COMMANDS  # noqa: E402
from training.cli.estimate import COMMANDS as _ESTIMATE_COMMANDS  # noqa: E402
from training.cli.follow import COMMANDS as _FOLLOW_COMMANDS  # noqa: E402
from training.cli.sweep import COMMANDS as _SWEEP_COMMANDS  # noqa: E402

for _command in (_AZURE_COMMANDS + _FOLLOW_COMMANDS + _ESTIMATE_COMMANDS + _SWEEP_COMMANDS
                 + _COMPARE_COMMANDS):
    main.add_command(_command)

from training.cli.assets import COMMANDS as _ASSET_COMMANDS  # noqa: E402
from training.cli.assets import DATA_COMMANDS as _DATA_COMMANDS  # noqa: E402

for _command in _ASSET_COMMANDS:
    main.add_command(_command)
for _command in _DATA_COMMANDS:
    data.add_command(_command)


if __name__ == "__main__":
    main()
