"""Everything `train run` checks and writes before an arm starts, in order of cost: the options,
the experiment file, the base model and the data (training.plan.prepare), the memory plan on this
machine, the pair id, the MLflow store, the pair folder and its locks. Bad input raises BadInput
here, before any arm starts; messages go through the callbacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.errors import BadInput
from training.experiment.config import ExperimentConfig
from training.experiment.pair import replicate_id

Say = Callable[[str], None]


@dataclass
class LocalStart:
    """A pair ready to run here: its folder written, its arms' locks free."""

    cfg: ExperimentConfig  # pinned: the revision is part of the pair id
    pair_id: str
    pair_dir: Path
    resolved: Path  # the pair's config.yaml, what both arms read
    tracking_uri: str
    threads: int  # per arm
    pinned: object  # training.experiment.base_model.Pinned


def replicates(cfg: ExperimentConfig, pair_id: str, pair_dir: Path) -> list[tuple[str, Path, int]]:
    """(pair id, folder, k) of each seed replicate: replicate k of both arms trains with seed + k,
    as pair PAIR_ID-rK in PAIR_DIR/rK/; one replicate keeps the plain layout."""
    n = cfg.training.replicates
    if n == 1:
        return [(pair_id, pair_dir, 0)]
    return [(replicate_id(pair_id, k), pair_dir / f"r{k}", k) for k in range(n)]


def memory_check(cfg: ExperimentConfig, arms: int, on_note: Say) -> None:
    """The memory plan on this machine (training.plan.memory): BadInput with the figures and the
    cheapest change that fits when an arm cannot fit, before anything is written."""
    from training.plan.memory import local_check
    from training.plan.model_shape import ShapeUnknown

    try:
        check = local_check(cfg, arms)
    except ShapeUnknown as e:
        on_note(f"no memory plan: {e}")
        return
    if not check.fits:
        raise BadInput("the arm does not fit this machine's memory: nothing was trained\n"
                       + check.message())


def check_options(pair_id: str | None, output_dir: Path) -> None:
    """--pair-id and --output-dir, before anything is read."""
    from training.experiment.pair import check_pair_id
    from training.experiment.paths import dir_problem

    if pair_id is not None:
        check_pair_id(pair_id)
    if problem := dir_problem(output_dir):
        raise BadInput(f"--output-dir {output_dir}: {problem}")


def prepare_run(cfg: ExperimentConfig, config_path: Path, output_dir: Path, arms: list[str], pair_id: str | None,
                tracking_uri: str | None, *, on_status: Say, on_note: Say, on_warning: Say,
                on_report: Callable[[object], None], check_interrupt: Callable[[], None]
                ) -> LocalStart:
    """Every check of `train run`, then the pair folder, its locks and the MLflow experiment.
    `on_report(report)` gets the data's validation report when the data is refused."""
    from training.experiment import locks
    from training.experiment.base_model import manifest_entry
    from training.experiment.paths import inside
    from training.experiment.tracking import (
        ensure_experiment,
        redacted,
        store_name,
    )
    from training.experiment.tracking import (
        tracking_uri as resolve_uri,
    )
    from training.local.backend import (
        LocalPair,
        check_pair,
        pair_id_for,
        prepare_pair,
        read_manifest,
    )
    from training.plan import prepare as prep

    check_options(pair_id, output_dir)
    try:
        # tiny-llama is built here, once, before the two arms would race for it
        ready = prep.prepare(cfg, status=on_status, on_note=on_note)
    except prep.NotReady as e:
        if e.report is not None:
            on_report(e.report)
        raise
    for warning in ready.warnings:
        on_warning(warning)
    data_warnings = ready.report.warnings
    for warning in data_warnings[:5]:
        on_warning(warning)
    if len(data_warnings) > 5:
        on_warning(f"... and {len(data_warnings) - 5} more data warnings (train data validate "
                   f"--config {config_path} lists them)")
    cfg = ready.cfg  # pinned: the revision is part of the pair id
    memory_check(cfg, len(arms), on_note)
    pair_id = pair_id or pair_id_for(cfg, ready.hashes)
    pair_dir = output_dir / pair_id
    if pair_dir.is_symlink() and not inside(pair_dir, output_dir):
        raise BadInput(f"{pair_dir} is a symlink out of --output-dir {output_dir}: remove it or "
                       "choose another --pair-id")
    check_interrupt()  # a Ctrl-C that could not raise while preparing: nothing written yet
    uri = resolve_uri(tracking_uri)
    try:
        ensure_experiment(uri, cfg.name)
    except Exception as e:  # a bad URI, an unwritable sqlite file, a store that is down
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(redacted(f"MLflow tracking URI {uri}: {first}")) from None
    folders = [folder for _, folder, _ in replicates(cfg, pair_id, pair_dir)]
    try:
        check_pair(cfg, pair_dir, pair_id, ready.hashes)  # another experiment's folder: refuse
        for folder in folders:  # one writer per arm: refuse before anything is written
            LocalPair(pair_dir / "config.yaml", folder, pair_id, arms, "").lock_arms()
        try:
            first = read_manifest(pair_dir) if (pair_dir / "pair.json").is_file() else {}
        except ValueError:  # not JSON: check_pair has said what it thinks of it already
            first = {}
        if isinstance(first, dict) and first.get("tracking_store") not in (None, store_name(uri)):
            raise BadInput(
                f"pair {pair_id} logs its runs to {first['tracking_store']}, not "
                f"{store_name(uri)}: pass that --tracking-uri (or $MLFLOW_TRACKING_URI) to "
                "resume or see it, or train it anew with another --output-dir")
        resolved = prepare_pair(cfg, pair_dir, pair_id, ready.hashes,
                                extra={**manifest_entry(ready.pinned),
                                       "tracking_store": store_name(uri)})
    except locks.Busy as e:
        raise BadInput(f"{e}: wait for it to end, or stop it (Ctrl-C in its terminal)") from None
    except OSError as e:
        raise BadInput(f"cannot write the pair folder {pair_dir}: {e.strerror or e}") from None
    return LocalStart(cfg, pair_id, pair_dir, resolved, uri,
                      read_manifest(pair_dir)["threads_per_arm"], ready.pinned)
