"""The recipe's Trainer callbacks: stop on a signal, mark complete checkpoints, report progress.

Imported by the recipe when it builds its Trainer (transformers is heavy: never at CLI start).

- `StopOnSignal`: SIGTERM/SIGINT becomes `save now, then stop` at the next step, on every rank.
- `StopOnDivergence`: a loss that is not a number ends training at once, nothing saved.
- `MarkComplete`: writes COMPLETE into a checkpoint once every rank's files are on disk; only such
  checkpoints are resumed from.
- `ReportCallback`: the progress events (`training.events`), a readable log line, throughput over
  the steps of this leg, and MLflow metrics (rank 0).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from training.experiment import tracking
from training.experiment.events import emit
from training.recipe.checkpoints import COMPLETE, Preemption

log = logging.getLogger("training.recipe")


def describe(step: int, max_steps: int, metrics: dict) -> str:
    """The same progress as a line for people reading a job's log."""
    parts = [f"step {step}/{max_steps}"]
    for key, fmt in (("train_loss", "loss {:.4f}"), ("eval_loss", "eval_loss {:.4f}"),
                     ("perplexity", "ppl {:.2f}"), ("learning_rate", "lr {:.2e}"),
                     ("tokens_per_second", "{:,.0f} tok/s")):
        if metrics.get(key) is not None:
            parts.append(fmt.format(metrics[key]))
    return "  ".join(parts)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class StopOnSignal(TrainerCallback):
    """Turns a signal into `save now, then stop` at the next step boundary, on every rank."""

    def __init__(self, preemption: Preemption):
        self.preemption = preemption

    def on_step_end(self, args, state, control, **kw):
        stop = self.preemption.signum is not None
        if _distributed():
            flag = torch.tensor([int(stop)], device=args.device)
            dist.all_reduce(flag)  # all ranks stop at the same step, or DDP would hang
            stop = bool(flag.item())
        if stop:
            control.should_save = True
            control.should_training_stop = True
        return control


class StopOnDivergence(TrainerCallback):
    """A train or eval loss that is inf or NaN (a learning rate too high, an fp16 overflow) stops
    training at once, without saving or evaluating the broken weights; the recipe then fails the
    arm. The logged losses are averaged over the ranks first, so every rank stops together."""

    def __init__(self):
        self.diverged: str | None = None  # what was seen, for the error message

    def check(self, logs: dict, step: int) -> str | None:
        for key, name in (("loss", "train loss"), ("train_loss", "train loss"),
                          ("eval_loss", "eval loss")):
            value = logs.get(key)
            if value is not None and not math.isfinite(value):
                self.diverged = self.diverged or f"{name} {value} at step {step}"
        return self.diverged

    def on_log(self, args, state, control, logs=None, **kw):
        if self.check(logs or {}, state.global_step):
            control.should_training_stop = True
            control.should_save = False
            control.should_evaluate = False
        return control


class MarkComplete(TrainerCallback):
    def on_save(self, args, state, control, **kw):
        if _distributed():
            dist.barrier()  # every rank's RNG state is on disk
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            (ckpt / COMPLETE).write_text(f"step {state.global_step}\n")


class ReportCallback(TrainerCallback):
    """Progress events, throughput and MLflow metrics (rank 0)."""

    def __init__(self, tracked: bool):
        self.tracked = tracked
        self.step_seconds = 0.0
        self.leg_tokens = 0
        self._t0 = None
        self._tokens0 = 0

    def on_train_begin(self, args, state, control, **kw):
        self._tokens0 = state.num_input_tokens_seen
        emit("start", step=state.global_step, max_steps=state.max_steps)

    def on_step_begin(self, args, state, control, **kw):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if self._t0 is not None:
            self.step_seconds += time.perf_counter() - self._t0
        self.leg_tokens = state.num_input_tokens_seen - self._tokens0

    @property
    def tokens_per_second(self) -> float:
        return self.leg_tokens / self.step_seconds if self.step_seconds else 0.0

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        metrics = {}
        if "loss" in logs:
            metrics = {"train_loss": logs["loss"], "learning_rate": logs.get("learning_rate"),
                       "grad_norm": logs.get("grad_norm"),
                       "tokens_per_second": self.tokens_per_second,
                       "tokens_seen": state.num_input_tokens_seen}
            emit("log", step=state.global_step, max_steps=state.max_steps, **metrics)
        elif "eval_loss" in logs:
            metrics = {"eval_loss": logs["eval_loss"], "perplexity": math.exp(logs["eval_loss"])}
            emit("eval", step=state.global_step, max_steps=state.max_steps, **metrics)
        else:
            return
        log.info(describe(state.global_step, state.max_steps, metrics))
        if self.tracked:
            tracking.log_metrics({k: v for k, v in metrics.items() if v is not None},
                                 step=state.global_step)
