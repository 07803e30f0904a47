"""The experiment file: one YAML per pair, validated with pydantic.

It is the single source of truth for both arms: the arms differ only in `arms.<arm>.train`.
Relative data paths are resolved against the folder of the experiment file, so a command works the
same from any working directory. Unknown keys are errors (a typo must not silently fall back to a
default), and every error names the field, e.g. `training.learning_rate: must be > 0`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

from training.experiment.config_yaml import ConfigError, format_errors, line_of, read_yaml

ARMS = ("control", "experiment")


class Strict(BaseModel):
    # strict: `max_steps: true`, `alpha: 1.5` or `seed: "7"` are errors, never silently 1, 1 or 7
    # (an int field takes only an int; a float field an int or a float; a bool field only a bool).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _as_path(value):
    """A path field takes a non-empty string (YAML has no path type); strict mode would want a
    Path instance."""
    if isinstance(value, Path):
        return value
    if isinstance(value, str) and value.strip():
        return Path(value)
    raise ValueError(f"must be a path (a non-empty string), got {value!r}")


PathField = Annotated[Path, BeforeValidator(_as_path)]


def _revision(value: str) -> str:
    """A hub commit, branch or tag (`main`, `v1.0`, `refs/pr/1`), or a `sha256:` fingerprint."""
    if not re.fullmatch(r"[A-Za-z0-9]+([._/:+-][A-Za-z0-9]+)*", value) or len(value) > 200:
        raise ValueError(f"{value!r} is not a commit sha, branch or tag (letters and digits, "
                         "single . _ / : + - between them)")
    return value


class LoraSettings(Strict):
    r: int = Field(16, gt=0, description="rank of the update matrices")
    alpha: int = Field(32, gt=0, description="scaling: the update is multiplied by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Annotated[list[str], Field(min_length=1)] | Literal["all-linear"] = "all-linear"


class EarlyStopping(Strict):
    patience: int = Field(3, gt=0, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="smallest eval-loss drop that counts")


MAX_SEED = 2**32 - 1  # numpy's seed range (transformers.set_seed seeds numpy)


class Training(Strict):
    max_steps: int | None = Field(None, gt=0, le=10**8,
                                  description="optimizer steps; wins over epochs")
    epochs: float | None = Field(None, gt=0, le=10_000)
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup: float = Field(0.03, ge=0, description="below 1: a fraction of the steps; else steps")
    weight_decay: float = Field(0.0, ge=0)
    per_device_batch_size: int = Field(4, gt=0, le=65_536)
    gradient_accumulation_steps: int = Field(1, gt=0, le=65_536)
    max_seq_length: int = Field(2048, gt=0, le=2**24)
    long_examples: Literal["error", "drop", "truncate"] = Field(
        "error", description="an example over max_seq_length tokens: error (validation refuses "
                             "the file) | drop (trained without it) | truncate (cut at "
                             "max_seq_length); dropped or cut rows are counted and logged")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="0 to 2**32 - 1 (numpy's range)")
    replicates: int = Field(1, gt=0, le=100,
                            description="train the pair N times, seeds seed, seed+1, ...")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    sharding: Literal["none", "fsdp", "auto"] = Field(
        "auto", description="none (DDP: a whole model per GPU) | fsdp (FSDP2: weights, gradients "
                            "and optimizer state sharded over the GPUs) | auto (fsdp only when the "
                            "memory plan does not fit one GPU)")
    cpu_offload: bool = Field(False, description="fsdp: keep the sharded state in CPU memory "
                                                 "(fits more, much slower)")
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
        if self.cpu_offload and self.sharding == "none":
            raise ValueError("training.cpu_offload needs training.sharding fsdp or auto")
        if self.seed + self.replicates - 1 > MAX_SEED:
            raise ValueError(f"training.seed + replicates - 1 must be at most {MAX_SEED} "
                             "(replicate k trains with seed + k)")
        return self


class Arm(Strict):
    train: PathField = Field(description="JSONL training data of this arm")


class Arms(Strict):
    control: Arm
    experiment: Arm


class SuccessCriteria(Strict):
    max_eval_loss: float | None = Field(None, gt=0)
    max_train_eval_gap: float | None = Field(None, ge=0, description="eval_loss - train_loss")


MAX_MINUTES = 30 * 24 * 60  # a month: longer is a typo, not a plan


class AzureSettings(Strict):
    """Where and how `train submit` runs each arm on Azure ML; both arms always get the same."""

    compute: str = Field("gpu", pattern=r"^[A-Za-z][A-Za-z0-9-]{1,31}$",
                         description="gpu | cpu (the stack's clusters) | a cluster name")
    instance_count: int = Field(1, gt=0, le=100, description="nodes per arm")
    processes_per_node: int = Field(1, gt=0, le=16, description="processes (GPUs) per node")
    shm_size: str = Field("16g", pattern=r"^[1-9][0-9]*[bkmg]$",
                          description="shared memory of the container, e.g. 16g")
    max_run_minutes: int | None = Field(
        None, gt=0, le=MAX_MINUTES,
        description="hard timeout per arm: a stuck job cannot eat the budget")
    environment: str | None = Field(
        None, pattern=r"^(azureml:)?[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+$",
        description="name:version, a fixed version: both arms must get the same environment "
                    "(`@latest` could resolve differently for each) [default: the stack's "
                    "training_environment]")
    experiment_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$",
        description="Azure ML experiment [default: name]")
    vm_size: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_]+$",
        description="VM size of the cluster, for estimates and the memory plan [default: the "
                    "stack's gpu_vm_size / cpu_vm_size, else the infra default]")
    price_per_hour: float | None = Field(
        None, gt=0, le=10_000,
        description="USD per node hour, at most 10,000 [default: the built-in list price]")
    gpu_peak_tflops: float | None = Field(
        None, gt=0, le=100_000,
        description="dense peak TFLOP/s per GPU, for a VM size the built-in table lacks")
    gpu_memory_gib: float | None = Field(
        None, gt=0, le=10_000,
        description="memory per GPU (GiB), for a VM size the built-in table lacks")

    @field_validator("shm_size")
    @classmethod
    def _shm_size(cls, v: str) -> str:
        scale = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30}[v[-1]]
        if int(v[:-1]) * scale > 2**40:
            raise ValueError("at most 1024g (it is the container's shared memory)")
        return v


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
        None, pattern=r"^(\d{4}-\d{2}-\d{2}(-preview)?|preview|latest)$",
        description="azure-openai API version, e.g. 2025-04-01-preview [default: "
                    "$OPENAI_API_VERSION, else a built-in one]")

    @field_validator("azure_endpoint")
    @classmethod
    def _azure_endpoint(cls, v: str | None) -> str | None:
        if v is not None and (problem := endpoint_problem(v)):
            raise ValueError(problem)
        return v


def endpoint_problem(url: str) -> str | None:
    """Why `url` cannot be an Azure OpenAI endpoint (None if it can): https with a host, no
    credentials, query or fragment (plain http only on this machine, for a local proxy)."""
    from urllib.parse import urlsplit

    expected = "expected the resource's https URL, e.g. https://NAME.openai.azure.com"
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return expected
    local = host in ("localhost", "127.0.0.1", "::1")
    if not host or not (parts.scheme == "https" or (parts.scheme == "http" and local)):
        return expected
    if parts.username or parts.password or parts.query or parts.fragment or url != url.strip():
        return f"{expected} (no user, query, fragment or spaces)"
    return None


class SearchParameter(Strict):
    """One dimension of a sweep's search space. min/max are real values (loguniform included:
    the log is taken when the sweep is built)."""

    type: Literal["choice", "uniform", "loguniform", "quniform"]
    values: list[bool | int | float | str] | None = Field(None, min_length=1,
                                                          description="choice")
    min_value: float | None = None
    max_value: float | None = None
    q: float | None = Field(None, gt=0, description="quniform: the step of the grid of values")


class EarlyTermination(Strict):
    """Stop unpromising trials early (not with bayesian sampling)."""

    type: Literal["bandit", "median", "truncation"]
    evaluation_interval: int = Field(1, gt=0, description="evaluations between checks")
    delay_evaluation: int = Field(0, ge=0, description="evaluations before the first check")
    slack_factor: float | None = Field(None, gt=0, description="bandit: slack vs the best [0.1]")
    truncation_percentage: int | None = Field(
        None, ge=1, le=99, description="truncation: % of runs cancelled [20]")

    @model_validator(mode="after")
    def _fields_of_type(self):
        if self.slack_factor is not None and self.type != "bandit":
            raise ValueError("slack_factor belongs to type bandit")
        if self.truncation_percentage is not None and self.type != "truncation":
            raise ValueError("truncation_percentage belongs to type truncation")
        return self


class SweepSettings(Strict):
    """`train sweep`: tune hyperparameters on one arm with an Azure ML sweep job."""

    search_space: dict[str, SearchParameter] = Field(
        min_length=1, description="training.<field> or lora.<field> -> its distribution")
    sampling: Literal["grid", "random", "bayesian"] = "random"
    objective: Literal["eval_loss", "perplexity"] = Field(
        "eval_loss", description="a metric the recipe logs; minimized")
    max_total_trials: int = Field(20, ge=1, le=1000)
    max_concurrent_trials: int = Field(4, ge=1, le=100)
    timeout_minutes: int | None = Field(None, gt=0, le=MAX_MINUTES, description="the whole sweep")
    early_termination: EarlyTermination | None = None


# What changes the weights a run trains. Not in the hash: `name` (a label; the pair id starts with
# it anyway), `success` and `budget_usd` (the verdict and the spending cap), `azure`, `openai` and
# `backend` (where and how the jobs run, price overrides), `sweep` (a search, not a setting).
WEIGHT_FIELDS = ("base_model", "base_model_revision", "method", "lora", "training")


class ExperimentConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    base_model: str = Field(min_length=1, description="hub id, local path, or tiny-llama")
    base_model_revision: Annotated[str, AfterValidator(_revision)] | None = Field(
        None,
        description="hub commit, branch or tag to pin (checked before the arms start); for a "
                    "local folder or tiny-llama its fingerprint. Unset: resolved at submit/run")
    backend: Literal["azureml", "openai", "azure-openai"] = Field(
        "azureml", description="where `train submit` sends the pair; --backend overrides it")
    method: Literal["lora", "qlora", "full"] = "lora"
    lora: LoraSettings = LoraSettings()
    training: Training
    arms: Arms
    eval: PathField | None = Field(None, description="shared evaluation JSONL for both arms")
    success: SuccessCriteria = SuccessCriteria()
    budget_usd: float | None = Field(None, ge=0.01, le=10_000_000,
                                     description="cost cap of each cloud run, USD")
    openai: OpenAISettings = OpenAISettings()
    azure: AzureSettings = AzureSettings()
    sweep: SweepSettings | None = Field(None, description="`train sweep`'s search (optional)")

    def for_replicate(self, k: int) -> ExperimentConfig:
        """Seed replicate k of the pair: the same experiment trained with training.seed + k."""
        if k == 0:
            return self
        seed = self.training.seed + k
        return self.model_copy(update={"training": self.training.model_copy(update={"seed": seed})})

    def train_file(self, arm: str) -> Path:
        return getattr(self.arms, arm).train

    def sha256(self) -> str:
        """Hash of what determines the trained weights (WEIGHT_FIELDS): the pair id is made from it
        and the data's content hashes, so editing the verdict's thresholds, the budget, prices or
        where the jobs run finds the same pair instead of retraining both arms. Data paths are
        left out too (they differ between machines; the data enters through its content hash).
        A backend adds what it alone trains with: Azure ML the world size (`azure_pair_id`), a
        hosted service its hyperparameters (`hosted_identity`)."""
        blob = self.model_dump(mode="json", include=set(WEIGHT_FIELDS))
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def parse_config(data: dict, source: str = "<config>", base_dir: Path | None = None,
                 lines: dict | None = None):
    """Validate a mapping; relative data paths and a relative base_model folder are anchored at
    base_dir (the experiment file's folder). `lines` (from `read_yaml`) puts line numbers on
    errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of fields at the top level")
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source, lines)) from None
    if base_dir is None:
        return cfg

    def anchor(p: Path) -> Path:
        return p.expanduser() if p.expanduser().is_absolute() else (base_dir / p).resolve()

    arms = Arms(**{a: Arm(train=anchor(cfg.train_file(a))) for a in ARMS})
    try:
        # a hosted backend's base_model is the service's model id (`ft:...` ones have colons)
        base_model = (cfg.base_model if cfg.backend in HOSTED_BACKENDS
                      else anchor_base_model(cfg.base_model, base_dir))
    except ValueError as e:
        line = line_of(lines or {}, ("base_model",))
        raise ConfigError(f"{source}{f':{line}' if line else ''}: base_model: {e}") from None
    return cfg.model_copy(update={"arms": arms, "eval": cfg.eval and anchor(cfg.eval),
                                  "base_model": base_model})


def anchor_base_model(base_model: str, base_dir: Path) -> str:
    """`tiny-llama`, a hub id, or a local folder made absolute (relative to the experiment file,
    like the data paths). A folder that exists there wins over a hub id of the same spelling; a
    path that does not exist is an error saying so, not a hub lookup of a path."""
    from training.experiment.models import TINY_LLAMA, hub_id_ok

    if base_model == TINY_LLAMA:
        return base_model
    path = Path(base_model).expanduser()
    candidate = path if path.is_absolute() else base_dir / path
    if os.path.lexists(candidate):
        try:
            return str(candidate.resolve(strict=True))
        except FileNotFoundError:
            raise ValueError(f"no such folder: {candidate} (a broken symlink)") from None
        except (OSError, RuntimeError):  # RuntimeError: Python 3.11's symlink loop
            raise ValueError(f"{candidate}: a symlink loop") from None
    looks_like_path = (base_model.startswith(("/", ".", "~")) or "\\" in base_model
                       or base_model.endswith("/") or base_model.count("/") > 1)
    if looks_like_path:
        raise ValueError(f"no such folder: {candidate}")
    if not hub_id_ok(base_model):
        raise ValueError(f"{base_model!r} is neither a folder (no {candidate}) nor a hub model id "
                         "such as meta-llama/Meta-Llama-3-8B (ASCII letters, digits, '-', '_' "
                         "and '.', at most 96 per part)")
    return base_model


def load_config(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    data, lines = read_yaml(path)
    return parse_config(data, str(path), path.parent.resolve(), lines=lines)
