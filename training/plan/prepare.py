"""Everything checked before a pair starts, in one place for `train run` and `train data validate`.

`prepare(cfg)` runs the checks in order of cost, so the cheap mistake is reported before the
expensive step: the data files are regular readable files; the base model is pinned
(training.base_model); its tokenizer loads at that revision; the data validates with it; the
machine and the model accept the settings (training.preflight). Any failure raises `NotReady` with
every problem found at that stage (exit 2 in the CLI); what is merely suspicious (both arms on the
same data, an arm equal to the eval set, a warmup as long as the run) comes back as warnings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from training.errors import BadInput
from training.experiment.config import ConfigError, ExperimentConfig, anchor_base_model


class NotReady(BadInput):
    """The pair cannot start; `problems` are lines to print, `report` the data report if any."""

    def __init__(self, headline: str, problems: list[str] | None = None, report=None):
        self.headline, self.problems, self.report = headline, problems or [], report
        super().__init__("\n  ".join([headline, *self.problems]))


@dataclass
class Prepared:
    cfg: ExperimentConfig  # base_model_revision pinned
    pinned: object  # training.base_model.Pinned
    files: dict[str, Path]  # control, experiment[, eval]
    report: object  # training.data.ValidationReport
    hashes: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def data_files(cfg: ExperimentConfig) -> dict[str, Path]:
    files = {"control": cfg.arms.control.train, "experiment": cfg.arms.experiment.train}
    if cfg.eval:
        files["eval"] = cfg.eval
    return files


def check_files(files: dict[str, Path]) -> None:
    from training.experiment.paths import file_problem

    bad = [f"{name}: {path}: {problem}" for name, path in files.items()
           if (problem := file_problem(path))]
    if bad:  # before fetching a tokenizer that may be gigabytes away
        raise NotReady("data files cannot be read:", bad)


def pin_and_load_tokenizer(cfg: ExperimentConfig, on_note=None):
    """(pinned config, Pinned, tokenizer): raises NotReady."""
    from training.experiment import base_model

    try:
        cfg, pinned = base_model.pin(cfg, on_note=on_note)
    except ConfigError as e:
        raise NotReady(str(e)) from None
    return cfg, pinned, tokenizer_for(cfg.base_model, cfg.base_model_revision)


def tokenizer_for(base_model: str, revision: str | None):
    """The tokenizer of a pinned base model: raises NotReady."""
    from training.experiment.base_model import reference
    from training.experiment.models import load_tokenizer

    name, revision = reference(base_model, revision)
    try:
        return load_tokenizer(name, revision=revision)
    except Exception as e:  # OSError, ValueError, EnvironmentError from transformers
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NotReady(f"base_model {base_model}: cannot load its tokenizer ({first})") from None


def tokenizer_for_name(base_model: str, on_note=None):
    """A tokenizer for `--base-model` given on the command line (a folder relative to here)."""
    from training.experiment.base_model import resolve

    try:
        anchored = anchor_base_model(base_model, Path.cwd())
        pinned = resolve(anchored, on_note=on_note)
    except ValueError as e:
        raise NotReady(f"--base-model {base_model}: {e}") from None
    except ConfigError as e:
        raise NotReady(str(e)) from None
    return tokenizer_for(anchored, pinned.revision)


def prepare(cfg: ExperimentConfig, *, status=None, on_note=None) -> Prepared:
    """All checks for a pair, in order of cost. `status(text)` hears what is being done."""
    from training import data as data_mod
    from training.plan import preflight

    say = status or (lambda text: None)
    files = data_files(cfg)
    check_files(files)
    say(f"pinning {cfg.base_model}")
    cfg, pinned, tokenizer = pin_and_load_tokenizer(cfg, on_note)
    say("validating the data")
    report = data_mod.validate_files(list(files.values()), tokenizer=tokenizer,
                                     max_seq_length=cfg.training.max_seq_length,
                                     long_examples=cfg.training.long_examples)
    if not report.ok:
        raise NotReady("the data is not valid: nothing was trained", report=report)
    by_role = dict(zip(files, report.files, strict=True))
    say("checking the settings against this machine and the model")
    from training.experiment.base_model import load_reference

    name, revision = load_reference(cfg)
    problems = preflight.problems(cfg, name, revision, {k: f.rows for k, f in by_role.items()})
    if problems:
        raise NotReady("the experiment cannot run here (nothing was started):", problems)
    return Prepared(cfg, pinned, files, report,
                    hashes={k: f.sha256 for k, f in by_role.items()},
                    warnings=data_mod.same_data_warnings(by_role)
                    + preflight.warmup_warnings(cfg, {k: f.rows for k, f in by_role.items()}))


def counting_tokenizer(base_model: str | None, cfg: ExperimentConfig | None, on_note=None):
    """The tokenizer `train data validate` counts with: --base-model's, else the experiment's
    pinned base model's, else tiny-llama's."""
    if base_model:
        return tokenizer_for_name(base_model)
    if cfg is None:
        return tokenizer_for_name("tiny-llama")
    return pin_and_load_tokenizer(cfg, on_note=on_note)[2]


def preflight_here(cfg: ExperimentConfig) -> None:
    """The settings against this machine and the model, as `train run` checks them (NotReady)."""
    from training.experiment import base_model
    from training.plan import preflight

    cfg = base_model.pin(cfg)[0]
    problems = preflight.problems(cfg, *base_model.load_reference(cfg))
    if problems:
        raise NotReady("the experiment cannot run here", problems)
