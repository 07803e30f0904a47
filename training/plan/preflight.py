"""Checks that need the machine or the model, made before any arm starts (exit 2 when one fails).

`train run` and `train data validate --config` call `problems(...)`: each problem is one line naming
the field, so a setting that would only fail inside an arm (`failed (exit 1)`, the cause buried in
its train.log, a pair folder already made) is reported on the console instead:

- precision against the hardware (fp16 needs a CUDA GPU, bf16 a GPU that has it);
- the method against the hardware (qlora needs CUDA and bitsandbytes);
- LoRA target modules against the model's own module names, from an instance built on the meta
  device from its config (no weights are read, so an 8B model is checked in a second);
- enough rows for a holdout when no shared eval set is given.
"""

from __future__ import annotations

import importlib.util

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
