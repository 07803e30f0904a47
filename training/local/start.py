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
from training.experiment.config import ARMS, ExperimentConfig
from training.experiment.pair import clash, replicate_id, replicate_ids, split_replicate_id

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


def folder_names(folder: Path) -> list[tuple[str, str]]:
    """(pair id, parent pair id) of each replicate of the pair in `folder` (its name), from its
    rK/ folders (made for every replicate before any trains)."""
    ks = sorted(int(p.name[1:]) for p in folder.glob("r*")
                if p.is_dir() and p.name[1:].isdigit())
    if not ks:
        return [(folder.name, folder.name)]
    return [(replicate_id(folder.name, k), folder.name) for k in ks]


def check_names(pair_id: str, replicates_n: int, output_dir: Path) -> None:
    """Refuse a pair whose names (its id, its replicates' ids) are another pair's in output_dir:
    `--pair-id x-r0` beside a replicated pair x, or a replicated x beside a pair x-r0."""
    ours = set(replicate_ids(pair_id, replicates_n)) | {pair_id}
    candidates = ours | {parts[0] for n in ours if (parts := split_replicate_id(n))}
    for other in sorted(candidates - {pair_id}):
        folder = output_dir / other
        if not (folder / "pair.json").is_file():
            continue
        for other_id, parent in folder_names(folder):
            if problem := clash(pair_id, replicates_n, other_id, parent):
                raise BadInput(f"pair {pair_id}: {problem} ({folder}): `train compare` would mix "
                               "the two; choose another --pair-id")


def check_store(uri: str, pair_id: str, replicates_n: int, ours: list[Path]) -> None:
    """Refuse, with one MLflow search, a pair whose names are another pair's in the store, or a
    pair the store already has finished runs of that were trained elsewhere (not in the arm
    folders `ours`): training it here would give each arm two runs."""
    import mlflow

    from training.experiment.tracking import redacted, store_name
    from training.local.backend import trained_in

    client = mlflow.MlflowClient(uri)
    try:
        experiments = [e.experiment_id for e in client.search_experiments()]
        # every run named by this pair's names has a pair_id tag starting with the pair id
        runs = client.search_runs(experiments, f"tags.pair_id LIKE '{pair_id}%'",
                                  max_results=1000) if experiments else []
    except Exception as e:  # the store answered ensure_experiment: this is unexpected
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(redacted(f"MLflow tracking URI {uri}: cannot search its runs: {first}")) \
            from None
    mine = {(f / "mlflow_run_id").read_text().strip() for f in ours
            if (f / "mlflow_run_id").is_file()}
    here = {str(f.resolve()) for f in ours}
    elsewhere: dict[str, list[str]] = {}
    for run in runs:
        tags = run.data.tags
        if "pair_id" not in tags or tags.get("arm") not in ARMS:
            continue
        if problem := clash(pair_id, replicates_n, tags["pair_id"], tags.get("parent_pair_id")):
            raise BadInput(f"pair {pair_id}: {problem} in the MLflow store {store_name(uri)} "
                           "(`train compare` would mix the two): choose another --pair-id")
        if tags["pair_id"] != pair_id and not tags["pair_id"].startswith(f"{pair_id}-r"):
            continue
        where = trained_in(tags)
        if run.info.status == "FINISHED" and run.info.run_id not in mine and where not in here:
            elsewhere.setdefault(where or "elsewhere (no local folder recorded: another "
                                 "machine, Azure ML, or an older version)", []).append(
                f"{tags['pair_id']} {tags['arm']}: run {run.info.run_id}")
    if elsewhere:
        listed = "\n  ".join(f"{where}: {', '.join(runs)}" for where, runs in elsewhere.items())
        raise BadInput(
            f"pair {pair_id} was already trained: the MLflow store {store_name(uri)} holds "
            f"finished runs of it from another folder:\n  {listed}\n`train compare {pair_id}` "
            "shows it; to train it again here (a second run of each arm), pass a new --pair-id")


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
    check_names(pair_id, cfg.training.replicates, output_dir)
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
    check_store(uri, pair_id, cfg.training.replicates,
                [folder / a for folder in folders for a in ARMS])
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
