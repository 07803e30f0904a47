"""What `train submit` decides before the pair's jobs are sent: the config the jobs read, the base
model pinned for a job (a hub id: a folder here cannot be read there), a sweep's best values,
--force's new names, and the dry run's files. Messages go through `on_note`/`on_warning`."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from training.azureml.jobs import ArmJob, JobSpecError, job_yaml
from training.azureml.snapshot import SNAPSHOT_MARKER, stage_code
from training.errors import BadInput
from training.experiment.config import ARMS, ExperimentConfig
from training.experiment.stack import StackOutputs

Say = Callable[[str], None]


def job_config(cfg: ExperimentConfig, outputs: StackOutputs) -> ExperimentConfig:
    """The experiment file the jobs read: the same bytes for every job of the pair. Data paths
    name the data assets (the jobs get the files as inputs); `eval` only when the stack has one."""
    from training.experiment.config import Arm, Arms

    assets = outputs.data_assets
    arms = Arms(**{a: Arm(train=Path(assets[a].id)) for a in ARMS})
    shared_eval = Path(assets["eval"].id) if "eval" in assets else None
    return cfg.model_copy(update={"arms": arms, "eval": shared_eval})


def check_shared_eval(cfg: ExperimentConfig, outputs: StackOutputs) -> None:
    if cfg.eval is not None and "eval" not in outputs.data_assets:
        raise BadInput(
            "the experiment file names a shared eval set (`eval:`) but the stack has no `eval` "
            "data asset: each arm would be scored on its own holdout, which is not comparable. "
            "Declare it (`pulumi config set evalAsset true`, `pulumi up`, `train data upload`) "
            "or remove `eval:` from the experiment file")


def forced_stamps():
    """--force's suffixes: this second, then the next ones, for when a forced pair or sweep was
    made in the same second (a script, a double Enter): --force always means a new one."""
    start = time.time()
    for k in range(10_000):
        yield time.strftime("%Y%m%d%H%M%S", time.localtime(start + k))


def check_out_dir(out_dir: Path) -> None:
    """--out must be a folder this tool may write: checked before anything is written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".paired-finetune-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise BadInput(f"--out {out_dir}: cannot write there ({e.strerror or e})") from None
    code = out_dir / "code"
    if code.is_symlink() or (code.exists() and not code.is_dir()):
        raise BadInput(f"--out {out_dir}: {code} exists and is not a folder")
    if code.is_dir() and any(code.iterdir()) and not (code / SNAPSHOT_MARKER).exists():
        raise BadInput(f"--out {out_dir}: {code} holds files this tool did not write; "
                       "choose an empty or new folder")


def pin_for_job(cfg: ExperimentConfig, on_note: Say, on_warning: Say,
                required: bool = True) -> ExperimentConfig:
    """The config with its base model pinned to one revision, resolved here once: both jobs load
    exactly that, however far apart they start. A dry run (required=False) that cannot pin goes
    on unpinned, and says so."""
    from training.experiment.base_model import BaseModelError, kind_of, pin

    if kind_of(cfg.base_model) == "local":
        raise BadInput(f"base_model {cfg.base_model}: a folder on this machine cannot be read by "
                       "an Azure ML job; use a hub id (e.g. meta-llama/Meta-Llama-3-8B)")
    try:
        cfg, pinned = pin(cfg, on_note=on_note)
    except BaseModelError as e:
        if required:
            raise
        on_warning(f"{e}\n  the job files leave the base model unpinned "
                   "(base_model_revision: null); `train submit` without --dry-run refuses that")
        return cfg
    on_note(f"base model {cfg.base_model} pinned to {pinned.revision} ({pinned.source})")
    return cfg


def apply_sweep(client, cfg: ExperimentConfig, sweep_job: str, on_note: Say, on_warning: Say):
    """The config with the sweep's best values (for both arms), and the tags that record it."""
    from training.azureml.sweep import best_values
    from training.experiment.config import ConfigError
    from training.experiment.overrides import apply_overrides

    try:
        values, arm, trial = best_values(client, sweep_job, cfg)
        cfg = apply_overrides(cfg, values, source=f"--from-sweep {sweep_job}")
    except (JobSpecError, ConfigError) as e:
        raise BadInput(str(e)) from None
    shown = ", ".join(f"{k}={v}" for k, v in sorted(values.items()))
    on_note(f"from sweep {sweep_job} (tuned on {arm}, best trial {trial}): {shown}")
    if arm == "experiment":
        on_warning("tuned on the experiment arm: the shared values favour it, a bias in the "
                   "direction the comparison tests (tune on control for a conservative verdict)")
    return cfg, {"from_sweep": sweep_job, "tuned_on_arm": arm, "sweep_trial": trial}


def write_dry_run(planned: list[ArmJob], config_yaml: str, out_dir: Path,
                  on_note: Say) -> tuple[list[Path], Path]:
    """The jobs as YAML files and the code snapshot they read, in `out_dir`; nothing is sent.
    Returns (job files, code folder)."""
    texts = {out_dir / f"{job.name}.yml": job_yaml(job, "./code") for job in planned}
    try:
        remove_stale_jobs(out_dir, set(texts), on_note)
        code = stage_code(out_dir / "code", config_yaml)
        for path, text in texts.items():
            path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise BadInput(f"--out {out_dir}: cannot write {e.filename or ''} "
                       f"({e.strerror or e})") from None
    return list(texts), code


def remove_stale_jobs(out_dir: Path, keep: set[Path], on_note: Say) -> None:
    """Job YAMLs an earlier dry run left in --out read the code snapshot this one replaces: they
    would submit another pair's names and tags with this config. Only files this tool wrote
    (they name `./code`, beside its snapshot marker) are removed, and each is named."""
    if not (out_dir / "code" / SNAPSHOT_MARKER).exists():
        return
    for path in sorted(out_dir.glob("*.yml")):
        if path not in keep and "code: ./code" in path.read_text(encoding="utf-8",
                                                                 errors="replace"):
            path.unlink()
            on_note(f"removed {path} (an earlier dry run's job, which would read this "
                    "code snapshot)")
