"""Checks that need the machine or the model, made before any arm starts (exit 2 when one fails).

`train run` and `train data validate --config` call `problems(...)`: each problem is one line naming
the field, so a setting that would only fail inside an arm (`failed (exit 1)`, the cause buried in
its train.log, a pair folder already made) is reported on the console instead:

- precision against the hardware (fp16 needs a CUDA GPU, bf16 a GPU that has it);
- the method against the hardware (qlora needs CUDA and bitsandbytes);
- sharding against the hardware: accelerate runs FSDP on CUDA GPUs only, so without one
  `sharding: fsdp` is refused (the Trainer would fall back to DDP or crash inside the arm), and so
  is `cpu_offload: true` (it offloads FSDP's shards: with no FSDP it would do nothing but change
  the pair id); `auto` is none there, as the recipe resolves it;
- LoRA target modules against the model's own module names, from an instance built on the meta
  device from its config (no weights are read, so an 8B model is checked in a second);
- enough rows for a holdout when no shared eval set is given.

What can run but is likely not what was meant comes back as warnings (`warnings(...)`): a warmup
that covers every optimizer step of an arm (its learning rate never reaches
training.learning_rate; a one-step run trains at 0).
"""

from __future__ import annotations

import importlib.util
import math

from training.experiment.config import ExperimentConfig

# Layer types peft's LoRA can adapt (peft.tuners.lora.model dispatch).
_LORA_LAYERS = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D",
                "MultiheadAttention", "Linear4bit", "Linear8bitLt")


def hardware() -> tuple[bool, bool]:
    """(CUDA available, bf16 supported)."""
    import torch

    cuda = torch.cuda.is_available()
    return cuda, cuda and torch.cuda.is_bf16_supported()


def hardware_problems(cfg: ExperimentConfig, cuda: bool, bf16: bool) -> list[str]:
    """Precision and method against the machine (pure: the hardware is given)."""
    from training.plan.hardware import choose_precision

    problems = []
    try:
        choose_precision(cfg.training.precision, cuda, bf16)
    except Exception as e:  # ConfigError, with the field named
        problems.append(str(e))
    if cfg.method == "qlora":
        if not cuda:
            problems.append("method: qlora needs a CUDA GPU (bitsandbytes 4-bit); use lora on "
                            "this machine")
        elif importlib.util.find_spec("bitsandbytes") is None:
            problems.append("method: qlora needs the bitsandbytes package (pip install "
                            "bitsandbytes); or use lora")
    if not cuda and cfg.training.sharding == "fsdp":
        problems.append("training.sharding: fsdp needs CUDA GPUs (accelerate runs FSDP on GPUs "
                        "only): use none (or auto, which is none here) on this machine")
    if not cuda and cfg.training.cpu_offload:
        problems.append("training.cpu_offload: true offloads FSDP's shards, and FSDP needs CUDA "
                        "GPUs: here it would do nothing (but change the pair id); remove it on "
                        "this machine")
    return problems


def module_names(name_or_path: str, revision: str | None) -> dict[str, str]:
    """{qualified module name: class name} of the model, built on the meta device from its
    config: no weights are read or allocated."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(name_or_path, revision=revision)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name: type(module).__name__ for name, module in model.named_modules() if name}


def target_module_problems(targets, modules: dict[str, str], model: str) -> list[str]:
    """LoRA target_modules against the model's modules (pure). peft matches a target by the full
    name or by the last dotted parts, and adapts only some layer types."""
    if targets == "all-linear":
        if not any(kind in ("Linear", "Conv1D") for kind in modules.values()):
            return [f"lora.target_modules: all-linear, but {model} has no linear layers"]
        return []
    linear = {n.rsplit(".", 1)[-1] for n, kind in modules.items()
              if kind in ("Linear", "Conv1D") and not n.endswith("lm_head")}
    adaptable = sorted(linear) + sorted({n.rsplit(".", 1)[-1] for n, kind in modules.items()
                                         if kind in _LORA_LAYERS} - linear)
    problems = []
    for target in targets:
        matched = {n: kind for n, kind in modules.items()
                   if n == target or n.endswith("." + target)}
        if not matched:
            problems.append(f"lora.target_modules: {target!r} is not a module of {model} (its "
                            f"adaptable layers: {', '.join(adaptable[:20]) or 'none'})")
            continue
        wrong = sorted({kind for kind in matched.values() if kind not in _LORA_LAYERS})
        if wrong:
            problems.append(f"lora.target_modules: {target!r} names a {', '.join(wrong)} in "
                            f"{model}, not a layer LoRA can adapt (use e.g. "
                            f"{', '.join(adaptable[:4])})")
    return problems


def rows_problems(cfg: ExperimentConfig, rows: dict[str, int]) -> list[str]:
    """Each arm needs a row to train on once its holdout is taken (pure)."""
    if cfg.eval is not None:
        return []
    problems = []
    for arm, n in rows.items():
        if arm != "eval" and n - max(1, round(n * cfg.training.eval_fraction)) < 1:
            problems.append(f"arms.{arm}.train: {n} row(s) leave nothing to train on after the "
                            "eval holdout: add rows or give a shared eval set (eval:)")
    return problems


def optimizer_steps(cfg: ExperimentConfig, rows: int, world: int = 1) -> int:
    """Optimizer steps of an arm trained on `rows` rows, as the Trainer counts them: max_steps,
    else epochs x (batches per epoch // accumulation, at least 1), rounded up (pure)."""
    t = cfg.training
    if t.max_steps:
        return t.max_steps
    batches = math.ceil(rows / (t.per_device_batch_size * world))
    return max(1, math.ceil(t.epochs * max(1, batches // t.gradient_accumulation_steps)))


def warmup_steps(cfg: ExperimentConfig, steps: int) -> int:
    """The Trainer's warmup: below 1 a fraction of the steps (rounded up), else steps."""
    w = cfg.training.warmup
    return int(w) if w >= 1 else math.ceil(steps * w)


def warmup_warnings(cfg: ExperimentConfig, rows: dict[str, int], world: int = 1) -> list[str]:
    """A warning when warmup covers every optimizer step of an arm (pure): the learning rate
    climbs from 0 for the whole run and never reaches training.learning_rate."""
    t = cfg.training
    if t.lr_scheduler == "constant" or t.warmup == 0:  # `constant` has no warmup
        return []
    short = {}
    for arm, n in rows.items():
        if arm == "eval":
            continue
        trained = n if cfg.eval is not None else n - max(1, round(n * t.eval_fraction))
        steps = optimizer_steps(cfg, max(1, trained), world)
        if warmup_steps(cfg, steps) >= steps:
            short[arm] = steps
    if not short:
        return []
    steps = min(short.values())
    warm = warmup_steps(cfg, steps)
    arms = " and ".join(f"{arm} {n} step(s)" for arm, n in short.items())
    return [f"training.warmup {t.warmup:g}: the warmup ({warm} step(s)) covers the whole run "
            f"({arms}): the learning rate never reaches training.learning_rate "
            f"{t.learning_rate:g}{' and the first step trains at 0' if steps == 1 else ''}; "
            "train longer (training.max_steps or epochs) or lower training.warmup"]


def problems(cfg: ExperimentConfig, name_or_path: str, revision: str | None,
             rows: dict[str, int] | None = None) -> list[str]:
    """Every check above, for this machine and this model."""
    cuda, bf16 = hardware()
    found = hardware_problems(cfg, cuda, bf16)
    if cfg.method in ("lora", "qlora"):
        try:
            modules = module_names(name_or_path, revision)
        except Exception as e:
            found.append(f"base_model {cfg.base_model}: cannot build it from its config to check "
                         f"lora.target_modules ({type(e).__name__}: {str(e).splitlines()[0]})")
        else:
            found += target_module_problems(cfg.lora.target_modules, modules, cfg.base_model)
    if rows:
        found += rows_problems(cfg, rows)
    return found
