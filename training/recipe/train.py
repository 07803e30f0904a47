"""Train one arm of a pair: data, model, Trainer, tracking. This is what runs inside every job.

    python -m training.recipe --config pair.yaml --arm control --output-dir runs/PAIR/control --pair-id PAIR
    torchrun --nproc_per_node 4 -m training.recipe ...        (one process per GPU: DDP, or FSDP
                                                               with training.sharding)

Top to bottom: read the config and data, load the base model (LoRA, QLoRA or full), train with the
HF Trainer, evaluate, write `model/` and `metrics.json`. Preemption-safe: SIGTERM or SIGINT writes a
checkpoint and exits 128+signal; started again with the same output folder it resumes from the latest
complete checkpoint and finishes exactly as an uninterrupted run would. Only rank 0 logs and writes.

Output folder layout:
    checkpoints/checkpoint-N/   Trainer checkpoints; COMPLETE marks one that was fully written
    model/                      the final model or LoRA adapter, loadable with from_pretrained / peft
    metrics.json                train_loss, eval_loss, perplexity, tokens_per_second, global_step, ...
    eval_examples.jsonl         each eval example's loss at the end (training/eval_examples.py)
    config.yaml                 the resolved experiment file this arm trained with
    mlflow_run_id               the arm's MLflow run, continued on resume
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

from training.data import DataError
from training.experiment import eval_examples, locks, tracking
from training.experiment.base_model import load_reference
from training.experiment.config import ARMS, ConfigError, ExperimentConfig, load_config
from training.experiment.events import EVENT_PREFIX, emit, rank  # noqa: F401 - EVENT_PREFIX: old import path
from training.experiment.models import load_tokenizer
from training.experiment.overrides import apply_overrides
from training.plan.hardware import choose_precision
from training.recipe.arm_data import prepare_arm_data, split_holdout  # noqa: F401 - old import path
from training.recipe.checkpoints import Preemption, latest_complete_checkpoint
from training.recipe.collate import make_collator
from training.recipe.sharding import (
    check_enabled,
    fsdp_arguments,
    runtime_sharding,
    save_final_model,
)

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Writing model shards" bars in logs

log = logging.getLogger("training.recipe")

# ----------------------------------------------------------------------------- small helpers
def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- callbacks
def make_callbacks(preemption: Preemption, report, divergence):
    """The recipe's callbacks (training.trainer_callbacks), `report` (a ReportCallback) last."""
    from training.recipe.callbacks import MarkComplete, StopOnSignal

    return [StopOnSignal(preemption), MarkComplete(), divergence, report]


# ----------------------------------------------------------------------------- the recipe
def attention_backends(cuda: bool) -> None:
    """SDPA without its cuDNN backend on CUDA. cuDNN builds a plan for each new sequence length,
    and packed (or padded-to-longest) batches change length every step: an 8B LoRA step on an
    H100 then waited on the CPU most of the time (bench/README.md: 1,108 -> 2,930 useful tokens/s,
    GPU busy 14% -> 40%). Flash and memory-efficient attention need no plans."""
    import torch

    if cuda:
        torch.backends.cuda.enable_cudnn_sdp(False)


def load_model(cfg: ExperimentConfig, model_path: str, precision: str,
               revision: str | None = None, sharding: str = "none"):
    import torch
    from transformers import AutoModelForCausalLM

    attention_backends(torch.cuda.is_available())

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    # use_cache=False, as the Trainer sets it for training: with a KV cache (most configs'
    # default) transformers does not look for packed rows in `position_ids`, so a forward pass
    # outside the Trainer would let each packed example attend to the ones before it.
    # On CPU each example of a packed row attends only to itself (training/attention.py) instead
    # of SDPA over the whole row with a block-diagonal mask: the same numbers, less work.
    from training.recipe.attention import register

    attention = "sdpa" if torch.cuda.is_available() else register()
    kwargs = {"attn_implementation": attention, "use_cache": False}
    if cfg.method == "qlora":
        if not torch.cuda.is_available():
            raise ConfigError("method: qlora needs a CUDA GPU (bitsandbytes 4-bit); use lora on CPU")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtypes[precision],
            # FSDP shards the packed 4-bit weights only when they are stored in the float dtype
            **({"bnb_4bit_quant_storage": dtypes[precision]} if sharding == "fsdp" else {}),
        )
    # Full fine-tuning keeps fp32 master weights (mixed precision autocasts); adapters train in
    # fp32 over a half-precision frozen base.
    kwargs["dtype"] = torch.float32 if cfg.method == "full" else dtypes[precision]
    if torch.cuda.is_available() and world_size() == 1 and sharding == "none":
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(model_path, revision=revision, **kwargs)

    if cfg.method == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora" and sharding == "none":  # FSDP: keep the bf16 layers bf16
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.training.gradient_checkpointing)
    elif cfg.training.gradient_checkpointing:
        model.enable_input_require_grads()  # else checkpointed LoRA layers get no gradient
    lora = cfg.lora
    return get_peft_model(model, LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules, task_type="CAUSAL_LM",
    ))


def training_arguments(cfg: ExperimentConfig, out: Path, precision: str,
                       fsdp: dict | None = None):
    import torch
    from transformers import TrainingArguments

    t = cfg.training
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        max_steps=t.max_steps or -1,
        num_train_epochs=t.epochs or 1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup,  # below 1: a ratio
        weight_decay=t.weight_decay,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda,
        # under FSDP its own activation checkpointing (fsdp_config) does it
        activation_checkpointing=t.gradient_checkpointing and cfg.method != "qlora" and not fsdp,
        eval_strategy="steps",
        eval_steps=t.eval_every,
        save_strategy="steps",
        save_steps=t.save_every,
        save_total_limit=t.keep_checkpoints,
        logging_steps=t.log_every,
        load_best_model_at_end=t.early_stopping is not None,
        # early stopping's patience count rides in the checkpoint: a resumed arm stops where an
        # uninterrupted one does
        restore_callback_states_from_checkpoint=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=t.seed,
        data_seed=t.seed,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_backend="gloo" if world_size() > 1 and not cuda else None,
        ddp_find_unused_parameters=False,
        disable_tqdm=True,
        report_to="none",
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN: StopOnDivergence sees it
        **(fsdp or {}),
    )


def train_arm(cfg: ExperimentConfig, arm: str, out: Path, pair_id: str,
              train_file: Path, eval_file: Path | None, preemption: Preemption,
              replicate: int = 0, parent_pair_id: str | None = None) -> int:
    import torch
    from accelerate import PartialState
    from transformers import (
        EarlyStoppingCallback,
        PrinterCallback,
        Trainer,
        set_seed,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    if threads := int(os.environ.get("PAIRED_FINETUNE_THREADS", "0")):
        torch.set_num_threads(threads)  # the pair's fixed per-arm count: same result alone or not
    t = cfg.training
    is_main = rank() == 0
    cuda = torch.cuda.is_available()
    precision = choose_precision(t.precision, cuda, cuda and torch.cuda.is_bf16_supported())
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(cfg.to_yaml())

    set_seed(t.seed)
    model_path, revision = load_reference(cfg)  # the pinned commit; a folder's files checked
    tokenizer = load_tokenizer(model_path, revision=revision)
    # the state the Trainer uses: with it the data is encoded once per node, then memory-mapped
    state = PartialState(cpu=not cuda, backend="gloo" if world_size() > 1 and not cuda else None)
    data = prepare_arm_data(t, tokenizer, arm, out, train_file, eval_file, state)
    train_ds, eval_ds, eval_rows, data_params = data.train, data.eval, data.eval_rows, data.params
    sharding = runtime_sharding(cfg, model_path, revision, world_size(), cuda,
                                cuda and torch.cuda.is_bf16_supported())
    model = load_model(cfg, model_path, precision, revision=revision, sharding=sharding)
    if preemption.signum is not None:
        return 128 + preemption.signum  # stopped before the first step: nothing to save

    # packed (padding-free) or padded batches; the lm_head only where the loss is (training/collate)
    collator = make_collator(tokenizer, t.packing, cuda)
    tracked = is_main and not os.environ.get("PAIRED_FINETUNE_NO_MLFLOW")
    from training.recipe.callbacks import ReportCallback, StopOnDivergence

    report, divergence = ReportCallback(tracked), StopOnDivergence()
    callbacks = make_callbacks(preemption, report, divergence)
    if t.early_stopping:
        callbacks.append(EarlyStoppingCallback(t.early_stopping.patience,
                                               t.early_stopping.min_delta))
    fsdp = fsdp_arguments(cfg, model) if sharding == "fsdp" else None
    trainer = Trainer(model=model, args=training_arguments(cfg, out, precision, fsdp),
                      train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator,
                      processing_class=tokenizer, callbacks=callbacks)
    check_enabled(trainer, sharding)  # never DDP in FSDP's name
    trainer.remove_callback(PrinterCallback)  # Report prints progress instead

    resume = latest_complete_checkpoint(out / "checkpoints")
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    params, tags = run_record(cfg, data_params, arm, pair_id, replicate, parent_pair_id,
                              precision=precision, sharding=sharding, n_trainable=n_trainable,
                              model_path=model_path)

    run = (tracking.arm_run(out, cfg.name, f"{pair_id}-{arm}", tags, params) if tracked
           else contextlib.nullcontext())
    with run:
        if resume:
            log.warning("resuming from %s", resume)
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        if preemption.signum is not None:
            emit("preempted", step=trainer.state.global_step)
            if tracked:
                tracking.end_run("KILLED")  # stopped by a signal: not FINISHED
            return 128 + preemption.signum
        if not divergence.diverged:  # the final evaluation may be the first non-finite loss
            metrics, example_losses = final_metrics(trainer, report, eval_ds, t, precision)
            divergence.check(metrics, trainer.state.global_step)
        if divergence.diverged:
            print(f"error: the {arm} arm diverged ({divergence.diverged}): its weights are not "
                  "usable and no final result was written; lower training.learning_rate, raise "
                  "training.warmup, or train in bf16 rather than fp16", file=sys.stderr)
            if tracked:
                tracking.end_run("FAILED")
            return 1
        write_results(trainer, tokenizer, out, metrics, eval_rows, example_losses, is_main,
                      tracked)
    return 0


def run_record(cfg, data_params: dict, arm: str, pair_id: str, replicate: int,
               parent_pair_id: str | None, *, precision: str, sharding: str, n_trainable: int,
               model_path: str) -> tuple[dict, dict]:
    """The params and tags of the arm's MLflow run; each one has its class (setting, data fact,
    result, identity) in experiment.tracking.FIELDS. The rows cut or dropped for max_seq_length
    are logged even when none were, so two arms always carry the same keys."""
    params = {**tracking.flatten(cfg.model_dump(mode="json", exclude={"arms", "eval", "sweep"})),
              "data.train_too_long": 0, "data.eval_too_long": 0,
              **data_params, "arm": arm, "pair_id": pair_id, "config_sha256": cfg.sha256(),
              "code_version": tracking.code_version(), "precision": precision,
              "world_size": world_size(), "sharding_resolved": sharding,
              "trainable_params": n_trainable, "base_model_path": model_path}
    tags = {"pair_id": pair_id, "arm": arm, "base_model": cfg.base_model, "method": cfg.method,
            "base_model_revision": cfg.base_model_revision or "unpinned",
            "code_version": params["code_version"], "replicate": str(replicate),
            "parent_pair_id": parent_pair_id or pair_id}
    return params, tags


# ----------------------------------------------------------------------------- the end of training
def final_metrics(trainer, report, eval_ds, t, precision: str) -> tuple[dict, list[float]]:
    """The arm's final metrics, and each eval example's loss (computed on every rank: a sharded
    model needs all of them in its forward)."""
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    if evals and evals[-1]["step"] == trainer.state.global_step and not t.early_stopping:
        final = evals[-1]  # the last step was just evaluated: don't pay for it twice
    else:
        final = trainer.evaluate()
    example_losses = eval_examples.example_losses(
        trainer.model, eval_ds.to_list(), t.per_device_batch_size, trainer.args.device)
    history = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "train_loss": history[-1]["loss"] if history else None,
        "eval_loss": final["eval_loss"],
        "perplexity": math.exp(final["eval_loss"]),
        "tokens_per_second": report.tokens_per_second,
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "stopped_early": trainer.state.global_step < trainer.state.max_steps,
        "precision": precision,
    }
    return metrics, example_losses


def write_results(trainer, tokenizer, out: Path, metrics: dict, eval_rows: list[dict],
                  example_losses: list[float], is_main: bool, tracked: bool) -> None:
    """model/ (every rank: FSDP gathers the shards), then on rank 0 the per-example losses and
    metrics.json, last: its presence means the arm finished."""
    save_final_model(trainer, str(out / "model.tmp"), is_main)
    if not is_main:
        return
    tokenizer.save_pretrained(str(out / "model.tmp"))
    shutil.rmtree(out / "model", ignore_errors=True)
    os.replace(out / "model.tmp", out / "model")
    if tracked:
        tracking.log_metrics({f"final_{k}": v for k, v in metrics.items()},
                             step=trainer.state.global_step)
    eval_examples.write(out / eval_examples.FILENAME,
                        eval_examples.records(eval_rows, example_losses))
    write_json_atomic(out / "metrics.json", metrics)
    if tracked:
        tracking.log_artifacts(out / "config.yaml", out / "metrics.json",
                               out / eval_examples.FILENAME)
    emit("done", **metrics)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.recipe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="experiment YAML (the pair's resolved config)")
    p.add_argument("--arm", required=True, choices=ARMS)
    p.add_argument("--output-dir", required=True, help="this arm's folder")
    p.add_argument("--pair-id", required=True)
    p.add_argument("--replicate", type=int, default=0,
                   help="seed replicate k of the pair: trains with training.seed + k")
    p.add_argument("--parent-pair-id", help="the id the pair's replicates share [default: --pair-id]")
    p.add_argument("--train-file", help="override arms.<arm>.train (Azure ML job input)")
    p.add_argument("--eval-file", help="override eval (Azure ML job input)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a training or lora field, e.g. training.learning_rate=3e-4 "
                        "(a sweep trial's sampled values); validated like the file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    preemption = Preemption()
    preemption.install()  # before the slow imports: a signal during start-up is not lost
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if rank() == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank()}] %(message)s", stream=sys.stderr)
    out = Path(args.output_dir)
    if rank() == 0:
        try:
            lock = locks.adopt_or_acquire(out)  # noqa: F841 - held until this process exits
        except locks.Busy as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if (out / "metrics.json").exists():
        log.info("%s already finished: %s", args.arm, out / "metrics.json")
        emit("done", **json.loads((out / "metrics.json").read_text()))
        return 0
    try:
        cfg = apply_overrides(load_config(args.config), args.set).for_replicate(args.replicate)
        train_file = Path(args.train_file) if args.train_file else cfg.train_file(args.arm)
        eval_file = Path(args.eval_file) if args.eval_file else cfg.eval
        return train_arm(cfg, args.arm, out, args.pair_id, train_file, eval_file, preemption,
                         args.replicate, args.parent_pair_id)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
