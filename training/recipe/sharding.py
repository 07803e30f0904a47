"""FSDP for the recipe: which sharding an arm trains with, the Trainer's FSDP settings, and the
final model gathered from the shards.

`training.sharding: none | fsdp | auto`. `none` is DDP (a whole model per GPU); `fsdp` is FSDP2
through the HF Trainer and accelerate: each decoder layer and the root are sharded over all the
arm's processes (every node), bf16/fp16 mixed precision from `training.precision`, FSDP's own
activation checkpointing when `training.gradient_checkpointing`, optional CPU offload. `auto`
takes the memory plan (training.memory) of this process's world on this GPU: DDP when the model
fits one GPU, FSDP otherwise. Every rank resolves it alike (same config, same world, same GPU type).

Checkpoints under FSDP are sharded state dicts (`pytorch_model_fsdp_0/`, `optimizer_0/`: one file
per rank); the recipe's COMPLETE marker follows a barrier, so it is written only once every rank's
shard is on disk. Sharded checkpoints hold no loadable model: `save_final_model` gathers the full
state dict on rank 0 and writes `model/` with `save_pretrained` (a LoRA run: the adapter only).

accelerate runs FSDP on GPUs only: on CPU the Trainer silently falls back to DDP, so
`check_enabled` refuses to train when FSDP was asked for and is not what the Trainer set up.
"""

from __future__ import annotations

import logging
import os

from training.experiment.config import ConfigError, ExperimentConfig

log = logging.getLogger("training.recipe")


def runtime_sharding(cfg: ExperimentConfig, model_path: str, revision: str | None, world: int,
                     cuda: bool, bf16: bool) -> str:
    """`none` or `fsdp` for this process: `auto` resolved against this GPU (or
    azure.gpu_memory_gib) and the world Azure ML (or torchrun) started."""
    requested = cfg.training.sharding
    if requested != "auto":
        return requested
    if not cuda:
        return "none"  # the Trainer's FSDP needs GPUs
    import torch

    from training.plan import memory

    try:
        shape = memory.model_shape(model_path, revision)
    except memory.ShapeUnknown as e:
        log.warning("training.sharding auto: %s; using none", e)
        return "none"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    gib = cfg.azure.gpu_memory_gib or torch.cuda.get_device_properties(local).total_memory / memory.GIB
    setup = memory.setup_for(cfg, world, True, bf16)
    return memory.resolve_sharding("auto", shape, setup, gib)


def layer_classes(model) -> list[str]:
    """The decoder layer classes FSDP wraps one by one (transformer-based auto wrap)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = list(getattr(base, "_no_split_modules", None) or [])
    if not names:
        raise ConfigError(f"training.sharding: fsdp: {type(base).__name__} does not name its "
                          "decoder layers (_no_split_modules); use sharding none")
    return names


def fsdp_arguments(cfg: ExperimentConfig, model) -> dict:
    """TrainingArguments for FSDP2 (merged into the recipe's own)."""
    t = cfg.training
    return {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": layer_classes(model),
            "state_dict_type": "SHARDED_STATE_DICT",
            "reshard_after_forward": True,
            "cpu_offload": t.cpu_offload,
            "activation_checkpointing": t.gradient_checkpointing,
            "cpu_ram_efficient_loading": False,
        },
    }


def check_enabled(trainer, sharding: str) -> None:
    if sharding == "fsdp" and not trainer.is_fsdp_enabled:
        raise ConfigError("training.sharding: fsdp, but the Trainer did not enable FSDP (accelerate "
                          "runs FSDP on CUDA GPUs only): use sharding none on this machine")


def save_final_model(trainer, folder: str, is_main: bool) -> None:
    """`model/` as from_pretrained (or peft) loads it, on one machine. Call on every rank: under
    FSDP the full state dict is gathered from all of them."""
    if not trainer.is_fsdp_enabled:
        trainer.save_model(folder)
        return
    state_dict = trainer.accelerator.get_state_dict(trainer.model)  # collective; full on rank 0
    if is_main:
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.save_pretrained(folder, state_dict=state_dict)
    trainer.accelerator.wait_for_everyone()
