"""bench/throughput.py's measured runs: one arm trained by the HF Trainer from the recipe's own
`load_model` and `training_arguments`, its training loop timed, its batches' tokens and examples
counted, its peak memory (and GPU utilisation) sampled, its final loss scored on the shared eval
rows; and, before the arms on a GPU, the search for the largest per-device batch that fits.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from throughput_setup import (
    RANDOM_SHAPES,
    ArmSpec,
    experiment_config,
    make_collator,
    random_weights,
)


# --------------------------------------------------------------------------- measuring
class Recording:
    """Wraps a collator: counts the tokens each batch computes and the examples it holds."""

    def __init__(self, collator):
        self.collator = collator
        self.real = self.computed = self.labelled = 0
        self.examples: list[str] = []

    def __call__(self, features):
        for f in features:
            self.examples.append(hashlib.sha1(str(f["input_ids"]).encode()).hexdigest()[:16])
            self.real += len(f["input_ids"])
        batch = self.collator(features)
        self.computed += batch["input_ids"].numel()
        self.labelled += int((batch["labels"][:, 1:] != -100).sum())
        return batch


class PeakMemory:
    """Peak memory while a block runs: the GPU's allocator peak, or on CPU the process's resident
    set above its level at the start (sampled every 20 ms; freed heap is trimmed first)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.peak = 0
        self.util: list[float] = []
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @staticmethod
    def gpu_utilisation() -> float | None:
        """The GPU's busy share now (NVML through torch, else nvidia-smi), or None."""
        import subprocess

        import torch

        with contextlib.suppress(Exception):  # torch needs pynvml (nvidia-ml-py)
            return float(torch.cuda.utilization())
        with contextlib.suppress(Exception):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=5, check=True)
            return float(out.stdout.split()[0])
        return None

    def _sample(self):
        while not self._stop.wait(0.02 if not self.cuda else 0.5):
            if self.cuda:
                if (u := self.gpu_utilisation()) is not None:
                    self.util.append(u)
            else:
                self.peak = max(self.peak, self.rss() - self.base)

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = 0
        else:
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            self.base = self.rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        self._stop.set()
        self._thread.join()
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        return False


# --------------------------------------------------------------------------- one arm
def loop_timer():
    """A Trainer callback timing the training loop (first to last step, batches included): what
    a long run pays per token; the one-time set-up and tear-down of `train()` are left out."""
    from transformers import TrainerCallback

    class LoopTimer(TrainerCallback):
        seconds = cpu_seconds = 0.0

        def on_train_begin(self, args, state, control, **kw):
            self._t0, self._c0 = time.perf_counter(), time.process_time()

        def on_train_end(self, args, state, control, **kw):
            self.seconds = time.perf_counter() - self._t0
            self.cpu_seconds = time.process_time() - self._c0  # this process's CPU time

    return LoopTimer()


@dataclass
class Result:
    spec: ArmSpec
    loop_s: float  # the training loop, what tokens per second are over
    wall_s: float  # the whole `trainer.train()` call
    cpu_s: float  # CPU time of the process during the loop: less sensitive to a shared machine
    real_tokens: int
    computed_tokens: int
    labelled_tokens: int
    peak_bytes: int
    eval_loss: float
    train_loss: float
    examples: list[str] = field(repr=False)
    gpu_util: float | None = None
    n_params: int = 0
    n_trainable: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.loop_s

    @property
    def padding_share(self) -> float:
        return 1 - self.real_tokens / self.computed_tokens


def run_arm(args, spec: ArmSpec, data, tokenizer, model_ref, out: Path) -> Result:
    """One round of one arm: the seed's initial weights, `args.updates` updates, then the eval."""
    import torch
    from transformers import PrinterCallback, Trainer, set_seed

    from training.experiment import eval_examples
    from training.recipe.train import choose_precision, load_model, training_arguments

    cuda = args.device == "cuda"
    cfg = experiment_config(args, spec, args.base_model_name)
    precision = choose_precision("auto", cuda, cuda and torch.cuda.is_bf16_supported())
    train_ds = data["a_train"] if spec.loss_on_every_token else data["b_train"]
    collator = Recording(make_collator(spec, tokenizer, args.max_seq_length, cuda,
                                       args.all_logits))
    set_seed(args.seed)  # the same initial weights (and LoRA init) for both arms
    with random_weights(args.model, args.layers) if args.model in RANDOM_SHAPES \
            else contextlib.nullcontext():
        model = load_model(cfg, model_ref, precision)
    if args.cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(True)
    if args.masked_attention:
        model.set_attn_implementation("sdpa")
    if args.packed_attention:
        from training.recipe import attention

        attention.CUDA = True
        model.set_attn_implementation(attention.register())
    targs = training_arguments(cfg, out / spec.name, precision)
    targs.set_evaluate("no")
    targs.set_save("no")
    targs.set_logging("steps", steps=args.updates, report_to="none")
    targs.dataloader_num_workers = args.dataloader_workers
    timer = loop_timer()
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=collator,
                      processing_class=tokenizer, callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # as the recipe: no log dicts on stdout
    if cuda:
        torch.cuda.synchronize()
    with PeakMemory(cuda) as mem:
        t0 = time.perf_counter()
        out_ = trainer.train()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    losses = eval_examples.example_losses(trainer.model, data["eval"], args.eval_batch,
                                          trainer.args.device)
    n = sum(k for k, loss in losses if k)
    eval_loss = sum(k * loss for k, loss in losses if k) / n
    result = Result(spec, timer.seconds, wall, timer.cpu_seconds, collator.real, collator.computed,
                    collator.labelled, mem.peak, eval_loss, out_.training_loss, collator.examples,
                    statistics.fmean(mem.util) if mem.util else None,
                    sum(p.numel() for p in model.parameters()),
                    sum(p.numel() for p in model.parameters() if p.requires_grad))
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
    return result


# --------------------------------------------------------------------------- GPU batch fit
def largest_batch(args, tokenizer, model_ref, limit: int = 64) -> int:
    """The largest per-device batch of packed max-length examples (the worst case) that trains a
    step without running out of GPU memory: doubling, then bisection."""
    import torch

    from training.recipe.collate import make_collator as recipe_collator
    from training.recipe.train import choose_precision, load_model

    spec = ArmSpec("fit", "fit", 1, 1, True, False)
    cfg = experiment_config(args, spec, args.base_model_name)
    precision = choose_precision("auto", True, torch.cuda.is_bf16_supported())
    with random_weights(args.model, args.layers):
        model = load_model(cfg, model_ref, precision)
    model.train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    collate = recipe_collator(tokenizer, True, True)  # packed; every position labelled here
    ids = list(range(10, 10 + args.max_seq_length))

    def fits(b: int) -> bool:
        batch = collate([{"input_ids": ids, "labels": ids}] * b)
        batch = {k: v.cuda() for k, v in batch.items()}
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model(**batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            opt.zero_grad(set_to_none=True)
            del batch
            torch.cuda.empty_cache()

    good, bad = 0, None
    b = 1
    while b <= limit and fits(b):
        good, b = b, b * 2
    bad = b if b <= limit else None
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good
