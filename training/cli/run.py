"""`train run`: a pair on this machine, both arms in parallel, then its verdict.

The pair id and folder, and the verdict, go to stdout; progress bars, notes and warnings to
stderr. The checks and the pair folder are training.local.start's; the arms are
training.local.backend's processes.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import click

from training.cli.common import diagnostics, note, print_warnings, results
from training.cli.interrupts import LateStop, interruptible
from training.errors import Failed, exit_interrupted
from training.experiment.config import ARMS


@click.command()
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
    console = diagnostics()
    arms = [arm] if arm else list(ARMS)
    try:
        with interruptible():  # Ctrl-C or SIGTERM while preparing: exit 130, nothing started
            start = _prepare(config_path, output_dir, arms, pair_id, tracking_uri, console)
    except KeyboardInterrupt:
        console.print("interrupted while preparing the pair: nothing was trained",
                      highlight=False)
        exit_interrupted()

    from training.experiment.tracking import redacted
    from training.local.backend import LocalPair, read_manifest
    from training.local.progress import PairProgress
    from training.local.start import replicates

    cfg, pair_id, pair_dir, uri = start.cfg, start.pair_id, start.pair_dir, start.tracking_uri
    results().print(f"pair [bold]{pair_id}[/] -> {pair_dir}   (MLflow: {redacted(uri)})")
    n = cfg.training.replicates
    failed = False
    late = LateStop()  # a Ctrl-C between pairs or after the last arm finished: noted, no traceback
    for rep_id, rep_dir, k in replicates(cfg, pair_id, pair_dir):
        if n > 1:
            console.print(f"replicate {k + 1}/{n}: [bold]{rep_id}[/] "
                          f"(seed {cfg.training.seed + k})")
        with PairProgress(console, arms) as progress:
            pair = LocalPair(start.resolved, rep_dir, rep_id, arms, uri, on_event=progress.update,
                             replicate=k, parent_pair_id=pair_id, threads=start.threads,
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
        raise Failed(f"pair {pair_id}: not every arm finished (above: which, and why)")
    if late.seen:
        console.print("stopped after every arm had finished: nothing was lost")
        return
    if arm is None and not os.environ.get("PAIRED_FINETUNE_NO_MLFLOW"):
        from training.cli.common import print_verdict

        print_verdict(uri, pair_id, "table")  # run's exit code says the arms trained, not more
        console.print(f"again, with the figure: train compare {pair_id} --plot compare.png")


def _prepare(config_path, output_dir, arms, pair_id, tracking_uri, console):
    from training.data import print_report
    from training.experiment.base_model import describe
    from training.experiment.config import load_config
    from training.local.start import check_options, prepare_run

    check_options(pair_id, output_dir)  # instant, before the experiment file is read
    cfg = load_config(config_path)
    if not console.is_terminal:  # no spinner in a log: say what the next seconds are
        console.print(f"preparing {cfg.base_model} and validating data", highlight=False)
    with console.status(f"preparing {cfg.base_model} and validating data") as status:
        start = prepare_run(
            cfg, config_path, output_dir, arms, pair_id, tracking_uri,
            on_status=lambda text: status.update(text), on_note=note(console),
            on_warning=lambda text: print_warnings([text], console),
            on_report=lambda report: print_report(report, console),
            check_interrupt=interruptible.check)
    console.print(f"base model: {describe(start.pinned)}", highlight=False)
    return start
