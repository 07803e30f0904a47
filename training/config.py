"""The experiment file: one YAML per pair, validated with pydantic.

It is the single source of truth for both arms: the arms differ only in `arms.<arm>.train`.
Relative data paths are resolved against the folder of the experiment file, so a command works the
same from any working directory. Unknown keys are errors (a typo must not silently fall back to a
default), and every error names the field, e.g. `training.learning_rate: must be > 0`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)

ARMS = ("control", "experiment")


class ConfigError(Exception):
    """A bad experiment file; the message names the file and every bad field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraSettings(Strict):
    r: int = Field(16, gt=0, description="rank of the update matrices")
    alpha: int = Field(32, gt=0, description="scaling: the update is multiplied by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class EarlyStopping(Strict):
    patience: int = Field(3, gt=0, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="smallest eval-loss drop that counts")


class Training(Strict):
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; wins over epochs")
    epochs: float | None = Field(None, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup: float = Field(0.03, ge=0, description="below 1: a fraction of the steps; else steps")
    weight_decay: float = Field(0.0, ge=0)
    per_device_batch_size: int = Field(4, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    max_seq_length: int = Field(2048, gt=0)
    seed: int = 42
    replicates: int = Field(1, gt=0, description="train the pair N times, seeds seed, seed+1, ...")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    packing: bool = Field(True, description="padding-free batches (no pad tokens computed)")
    eval_every: int = Field(100, gt=0, description="steps between evaluations")
    save_every: int = Field(100, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, gt=0, description="retention limit")
    log_every: int = Field(10, gt=0)
    early_stopping: EarlyStopping | None = None
    eval_fraction: float = Field(
        0.1, gt=0, lt=1, description="holdout per arm when no shared eval set is given"
    )

    @model_validator(mode="after")
    def _length(self):
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set training.max_steps or training.epochs")
        if self.early_stopping and self.save_every % self.eval_every:
            # the best checkpoint must exist on disk to be restored at the end
            raise ValueError("with early_stopping, save_every must be a multiple of eval_every")
        return self


class Arm(Strict):
    train: Path = Field(description="JSONL training data of this arm")


class Arms(Strict):
    control: Arm
    experiment: Arm


class SuccessCriteria(Strict):
    max_eval_loss: float | None = Field(None, gt=0)
    max_train_eval_gap: float | None = Field(None, ge=0, description="eval_loss - train_loss")


BACKENDS = ("azureml", "openai", "azure-openai")
HOSTED_BACKENDS = ("openai", "azure-openai")


def _auto_or(kind: type, low: float, high: float, low_open: bool = False):
    """A validator for `auto` or a number in a range, with one clear message (a plain union would
    report a failure per branch)."""
    what = "an integer" if kind is int else "a number"
    bounds = f"{'above' if low_open else 'from'} {low:g} to {high:g}"

    def check(value):
        if value == "auto":
            return value
        ok_type = isinstance(value, int) if kind is int else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type:
            raise ValueError(f"must be auto or {what} {bounds}, got {value!r}")
        if not (low < value if low_open else low <= value) or value > high:
            raise ValueError(f"must be auto or {what} {bounds}, got {value!r}")
        return value

    return PlainValidator(check, json_schema_input_type=str | kind)


class OpenAISettings(Strict):
    """Fine-tuning on a managed service (backend openai or azure-openai): the job's hyperparameters,
    the same for both arms; `training.seed` is the job's seed. `auto` lets the service choose."""

    method: Literal["supervised"] = "supervised"
    n_epochs: Annotated[int | str, _auto_or(int, 1, 50)] = "auto"
    batch_size: Annotated[int | str, _auto_or(int, 1, 256)] = "auto"
    learning_rate_multiplier: Annotated[float | str, _auto_or(float, 0, 10, low_open=True)] = "auto"
    example_token_limit: int | None = Field(
        None, gt=0, description="tokens per example for a model the built-in table lacks")
    azure_endpoint: str | None = Field(
        None, description="azure-openai: https://NAME.openai.azure.com [default: "
                          "$AZURE_OPENAI_ENDPOINT]")
    api_version: str | None = Field(
        None, description="azure-openai API version [default: $OPENAI_API_VERSION, else a "
                          "built-in one]")


class ExperimentConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    base_model: str = Field(min_length=1, description="hub id, local path, or tiny-llama")
    backend: Literal["azureml", "openai", "azure-openai"] = Field(
        "azureml", description="where `train submit` sends the pair; --backend overrides it")
    method: Literal["lora", "qlora", "full"] = "lora"
    lora: LoraSettings = LoraSettings()
    training: Training
    arms: Arms
    eval: Path | None = Field(None, description="shared evaluation JSONL for both arms")
    success: SuccessCriteria = SuccessCriteria()
    budget_usd: float | None = Field(None, gt=0)
    openai: OpenAISettings = OpenAISettings()

    def for_replicate(self, k: int) -> ExperimentConfig:
        """Seed replicate k of the pair: the same experiment trained with training.seed + k."""
        if k == 0:
            return self
        seed = self.training.seed + k
        return self.model_copy(update={"training": self.training.model_copy(update={"seed": seed})})

    def train_file(self, arm: str) -> Path:
        return getattr(self.arms, arm).train

    def sha256(self) -> str:
        """Hash of what the pair trains with, data paths excluded (they differ between machines;
        the data enters the pair id through its own content hash)."""
        blob = self.model_dump(mode="json", exclude={"arms", "eval"})
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid experiment file"]
    for e in error.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "required field missing"
        lines.append(f"  {field}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<config>", base_dir: Path | None = None):
    """Validate a mapping; relative data paths are anchored at base_dir."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of fields at the top level")
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e, source)) from None
    if base_dir is None:
        return cfg

    def anchor(p: Path) -> Path:
        return p if p.is_absolute() else (base_dir / p).resolve()

    arms = Arms(**{a: Arm(train=anchor(cfg.train_file(a))) for a in ARMS})
    return cfg.model_copy(update={"arms": arms, "eval": cfg.eval and anchor(cfg.eval)})


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read experiment file ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    return parse_config(data, str(path), path.parent.resolve())
