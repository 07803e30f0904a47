"""Training throughput: the guide's recipe against this project's, on skewed-length chat data.

    .venv/bin/python bench/throughput.py                  # CPU, the tiny model, a few minutes
    .venv/bin/python bench/throughput.py --repeats 3      # a, b, b, a, a, b: ratios per round
    .venv/bin/python bench/throughput.py --device cuda    # Llama-3-8B shape, random weights, LoRA,
                                                          # bf16, seq 2048, packing; MFU, batch fit

One process trains the same model from the same initial weights on the same deterministic
synthetic chat data (many short examples, a long tail to the max length), the same examples in the
same order, for the same number of optimizer updates, twice:

  (a) guide    the guide's recipe: every example padded to the max length, per-device batch 2,
               gradient accumulation 8 (16 examples per update), no packing, loss on every token;
  (b) recipe   this project's recipe with its defaults: padding-free packing
               (DataCollatorWithFlattening), loss on the assistant's tokens only, per-device batch
               4 (the default) with gradient accumulation 4 to take the same 16 examples per update.

Everything else is the recipe's own code: `training.recipe.load_model` and `training_arguments`,
`training.data.encode_examples`, (b)'s collator `training.collate.make_collator` (packing, and the
lm_head only on labelled positions), the HF Trainer, `training.eval_examples.example_losses` for
the final loss on the shared eval set (assistant tokens, token-weighted, the same for both).
Useful tokens are the examples' real (non-padding) tokens: the same count for (a) and (b), so the
ratio of useful tokens per second is the ratio of wall times. The last line is `speedup: X.XX`.
See bench/README.md for the numbers and the MFU formula.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import math
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

EXAMPLES_PER_UPDATE = 16  # the guide's 2 x 8
RANDOM_SHAPES = ("llama3-8b", "mini")  # random-weights models built from a shape, no download

# --------------------------------------------------------------------------- synthetic data
_NAMES = ("count", "data", "key", "value", "items", "row", "rows", "total", "index", "limit", "path",
          "name", "size", "buffer", "result", "record", "records", "user", "users", "config",
          "options", "cache", "queue", "offset", "start", "end", "text", "line", "lines", "token",
          "tokens", "score", "scores", "price", "amount", "batch", "state", "node", "nodes",
          "parent", "child")
_LINES = ("{a} = {b} + {c}", "if {a} is None:", "    return {b}", "for {a} in {b}:",
          "    {c}.append({a})", "{a} = max({b}, min({c}, 100))", "return [x for x in {a} if x]",
          "{a} = {b}.get({c!r}, 0)", "while {a} < {b}:", "    {a} += 1", "{a} = sorted({b})",
          "raise ValueError({a!r})", "{a} = {b}[{c}:]", "with open({a}) as {b}:",
          "{a} = len({b}) // 2", "    {b}[{a}] = {c}")
_COMMENTS = ("# {a} must stay below the limit, so {b} is clamped here.",
             "# Return the {a} of {b}; an empty {c} has none.",
             "# Edge case: {a} is None when {b} was never set.",
             "# {b} is sorted first because {c} is searched in order.",
             "# The {a} wins over {b}; callers rely on {c} being unique.")


def synthetic_rows(n: int, seed: int, median_lines: float, sigma: float = 1.0) -> list[dict]:
    """`n` chat rows "comment this function" -> a review comment, deterministic for a seed.

    The function's length in lines is log-normal (median `median_lines`, shape `sigma`): most
    examples are short and a few run long (they are cut at the max length when encoded), like
    real review comments. The comment grows slowly with the code."""
    if n < 1 or median_lines <= 0 or sigma < 0:
        raise ValueError("need n >= 1, median_lines > 0 and sigma >= 0")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        lines = max(1, round(rng.lognormvariate(math.log(median_lines), sigma)))
        words = [rng.choice(_NAMES) for _ in range(3)]
        code = [f"def {words[0]}_{words[1]}({words[2]}):"]
        for _ in range(lines):
            a, b, c = (rng.choice(_NAMES) for _ in range(3))
            code.append("    " + rng.choice(_LINES).format(a=a, b=b, c=c))
        comment = [rng.choice(_COMMENTS).format(a=words[0], b=words[1], c=words[2])
                   for _ in range(1 + min(4, lines // 8))]
        rows.append({"messages": [
            {"role": "user", "content": "Comment this function:\n" + "\n".join(code)},
            {"role": "assistant", "content": "\n".join(comment)},
        ]})
    return rows


# --------------------------------------------------------------------------- the two recipes
@dataclass(frozen=True)
class ArmSpec:
    name: str
    label: str
    per_device_batch_size: int
    gradient_accumulation_steps: int
    packing: bool
    loss_on_every_token: bool


def arm_specs(micro_batch: int = 4) -> dict[str, ArmSpec]:
    """(a) the guide's recipe and (b) the project's; both take 16 examples per update."""
    if micro_batch < 1 or EXAMPLES_PER_UPDATE % micro_batch:
        raise ValueError(f"--micro-batch must divide {EXAMPLES_PER_UPDATE}, got {micro_batch}")
    return {
        "a": ArmSpec("a", "guide: pad to max, 2x8, all tokens", 2, 8, False, True),
        "b": ArmSpec("b", f"recipe: packed, {micro_batch}x{EXAMPLES_PER_UPDATE // micro_batch}, "
                          "assistant tokens", micro_batch, EXAMPLES_PER_UPDATE // micro_batch,
                     True, False),
    }


def experiment_config(args, spec: ArmSpec, base_model: str):
    """The arm's experiment file, validated like a user's; only the batch shape and packing differ
    between (a) and (b); the optimizer, schedule, precision and seed are the same."""
    from training.config import ExperimentConfig

    data = {
        "name": "bench-throughput", "base_model": base_model, "method": args.method,
        "training": {
            "max_steps": args.updates, "learning_rate": args.learning_rate,
            "lr_scheduler": "cosine", "warmup": 0.05,
            "per_device_batch_size": spec.per_device_batch_size,
            "gradient_accumulation_steps": spec.gradient_accumulation_steps,
            "max_seq_length": args.max_seq_length, "seed": args.seed,
            "precision": "auto", "packing": spec.packing,
            "gradient_checkpointing": args.gradient_checkpointing,
            "eval_every": args.updates, "save_every": args.updates, "log_every": args.updates,
        },
        "arms": {"control": {"train": "unused.jsonl"}, "experiment": {"train": "unused.jsonl"}},
    }
    return ExperimentConfig.model_validate(data)


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


def make_collator(spec: ArmSpec, tokenizer, max_len: int, cuda: bool = False,
                  all_logits: bool = False):
    from transformers import DataCollatorForSeq2Seq

    from training.collate import make_collator as recipe_collator

    if not spec.loss_on_every_token:  # (b): the recipe's own collator
        return recipe_collator(tokenizer, spec.packing, cuda, labelled_logits_only=not all_logits)
    # the guide: every example padded to the max length; pad positions carry no loss
    return DataCollatorForSeq2Seq(tokenizer, padding="max_length", max_length=max_len,
                                  label_pad_token_id=-100)


def encode(rows, tokenizer, max_len: int, every_token: bool):
    """The recipe's encoding (chat template, assistant-only labels, truncation); the guide's
    labels are the input ids themselves."""
    from datasets import Dataset

    from training.data import encode_examples

    enc = encode_examples(rows, tokenizer, max_len)
    if every_token:
        enc = [{"input_ids": e["input_ids"], "labels": list(e["input_ids"])} for e in enc]
    return Dataset.from_list(enc)


# --------------------------------------------------------------------------- measuring
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


@contextlib.contextmanager
def random_weights(shape_name: str, layers: int | None):
    """Make `from_pretrained` of the recipe's `load_model` build a model of a known shape with
    random weights (no download, nothing written): the recipe's dtype, attention, device and
    LoRA choices still apply."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**shape_config(shape_name, layers))
    real = AutoModelForCausalLM.from_pretrained

    def build(path, revision=None, dtype=None, attn_implementation=None, device_map=None, **kw):
        device = "cuda" if device_map else "cpu"
        with torch.device(device):
            return AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                    attn_implementation=attn_implementation)

    AutoModelForCausalLM.from_pretrained = build
    try:
        yield
    finally:
        AutoModelForCausalLM.from_pretrained = real


def shape_config(name: str, layers: int | None = None) -> dict:
    from training.model_shape import model_shape

    if name == "llama3-8b":
        s = model_shape("meta-llama/Meta-Llama-3-8B")  # the built-in table: no download
        cfg = dict(hidden_size=s.hidden, intermediate_size=s.intermediate,
                   num_hidden_layers=s.n_layers, num_attention_heads=s.n_heads,
                   num_key_value_heads=s.n_kv_heads, vocab_size=s.vocab,
                   tie_word_embeddings=s.tied_embeddings, rope_theta=500000.0,
                   max_position_embeddings=8192, rms_norm_eps=1e-5)
    elif name == "mini":  # the same code path, small enough to try on a CPU
        cfg = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=4096,
                   tie_word_embeddings=False, max_position_embeddings=4096)
    else:
        raise ValueError(f"unknown random shape {name!r}")
    if layers:
        cfg["num_hidden_layers"] = layers
    return cfg


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
    import torch
    from transformers import PrinterCallback, Trainer, set_seed

    from training import eval_examples
    from training.recipe import choose_precision, load_model, training_arguments

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
        from training import attention

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
    result = Result(spec, timer.seconds, wall, timer.cpu_seconds, collator.real, collator.computed, collator.labelled, mem.peak,
                    eval_loss, out_.training_loss, collator.examples,
                    statistics.fmean(mem.util) if mem.util else None,
                    sum(p.numel() for p in model.parameters()),
                    sum(p.numel() for p in model.parameters() if p.requires_grad))
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
    return result


# --------------------------------------------------------------------------- GPU extras
def mfu(result: Result, method: str, gradient_checkpointing: bool, peak_tflops: float):
    """(MFU with train estimate's formula, MFU by the strict 6·N_trainable + 4·N_frozen)."""
    from training.estimate import flops_per_token

    per_token, _ = flops_per_token(method, result.n_params, gradient_checkpointing)
    frozen = result.n_params - result.n_trainable
    strict = 6 * result.n_trainable + 4 * frozen
    rate = peak_tflops * 1e12
    return (per_token * result.tokens_per_second / rate, strict * result.tokens_per_second / rate)


def gpu_peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of the GPU, from its name (training/hardware.py's table)."""
    from training import hardware

    n = name.lower()
    for key, acc in (("h100 nvl", hardware.H100_NVL), ("h100", hardware.H100),
                     ("h200", hardware.H100), ("a100", hardware.A100_80)):
        if key in n:
            return acc.peak_tflops  # H200: the same H100 tensor cores (989 TFLOP/s dense bf16)
    return None


def largest_batch(args, tokenizer, model_ref, limit: int = 64) -> int:
    """The largest per-device batch of packed max-length examples (the worst case) that trains a
    step without running out of GPU memory: doubling, then bisection."""
    import torch

    from training.collate import make_collator as recipe_collator
    from training.recipe import choose_precision, load_model

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


# --------------------------------------------------------------------------- the report
def human_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def arm_cells(r: Result) -> dict[str, str]:
    """One arm's column of the table: label -> formatted value."""
    return {"useful tokens/s": f"{r.tokens_per_second:,.0f}",
            "useful tokens": f"{r.real_tokens:,}",
            "tokens computed": f"{r.computed_tokens:,}",
            "padding share": f"{r.padding_share:.1%}",
            "tokens with loss": f"{r.labelled_tokens:,}",
            "peak memory": human_bytes(r.peak_bytes),
            "final train loss": f"{r.train_loss:.4f}",
            "eval loss (shared)": f"{r.eval_loss:.4f}",
            "training loop": f"{r.loop_s:.1f} s",
            "wall time (train())": f"{r.wall_s:.1f} s",
            "loop CPU time": f"{r.cpu_s:.1f} s"}


def table(a: Result, b: Result, extra: dict | None = None) -> str:
    ratios = {"useful tokens/s": f"{b.tokens_per_second / a.tokens_per_second:.2f}",
              "useful tokens": f"{b.real_tokens / a.real_tokens:.2f}",
              "tokens computed": f"{b.computed_tokens / a.computed_tokens:.2f}",
              "peak memory": f"{b.peak_bytes / a.peak_bytes:.2f}" if a.peak_bytes else "",
              "eval loss (shared)": f"{b.eval_loss - a.eval_loss:+.4f}",
              "training loop": f"{b.loop_s / a.loop_s:.2f}",
              "wall time (train())": f"{b.wall_s / a.wall_s:.2f}",
              "loop CPU time": f"{b.cpu_s / a.cpu_s:.2f}" if a.cpu_s else ""}
    cells_a, cells_b = arm_cells(a), arm_cells(b)
    rows = [("", "(a) guide", "(b) recipe", "b/a")]
    rows += [(k, cells_a[k], cells_b[k], ratios.get(k, "")) for k in cells_a]
    for key, (va, vb) in (extra or {}).items():
        rows.append((key, va, vb, ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(f"{r[0]:<{widths[0]}}  " + "  ".join(f"{c:>{w}}" for c, w in
                                                          zip(r[1:], widths[1:], strict=True))
                     for r in rows)


def gpu_rows(args, results) -> dict:
    """MFU (both conventions) and GPU utilisation of each result, as table rows."""
    import torch

    if args.device != "cuda":
        return {}
    rows = {}
    peak = gpu_peak_tflops(torch.cuda.get_device_name(0))
    if peak:
        ours, strict = zip(*(mfu(r, args.method, args.gradient_checkpointing, peak)
                             for r in results), strict=True)
        rows["MFU (train estimate's)"] = tuple(f"{x:.1%}" for x in ours)
        rows["MFU (6Nt+4Nf)"] = tuple(f"{x:.1%}" for x in strict)
    rows["GPU utilisation"] = tuple(f"{r.gpu_util:.0f}%" if r.gpu_util is not None else "n/a"
                                    for r in results)
    return rows


def report_one(args, b: Result) -> int:
    """`--arms b`: (b)'s numbers alone, to set beside an earlier run's (b)."""
    print()
    cells = arm_cells(b)
    lines = [(k, cells[k]) for k in ("useful tokens/s", "useful tokens", "peak memory",
                                     "final train loss", "eval loss (shared)", "training loop")]
    lines += [(k, v[0]) for k, v in gpu_rows(args, (b,)).items()]
    width = max(len(k) for k, _ in lines)
    print("\n".join(f"{k:<{width}}  {v:>12}" for k, v in lines))
    print(f"(b) useful tokens/s: {b.tokens_per_second:.0f}")
    return 0


# --------------------------------------------------------------------------- main
class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)", except where the help states its own computed default."""

    def _get_help_string(self, action):
        if action.default is None or "[default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=_Defaults)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--model", default=None,
                   help="tiny-llama, a local model folder, or a random-weights shape: "
                        f"{', '.join(RANDOM_SHAPES)} [default: tiny-llama on cpu, llama3-8b on cuda]")
    p.add_argument("--layers", type=int, default=None, help="override a random shape's layers")
    p.add_argument("--method", choices=("full", "lora"), default=None,
                   help="[default: full on the tiny model, lora on a random shape]")
    p.add_argument("--updates", type=int, default=None,
                   help="optimizer updates per arm [default: 8 on cpu, 6 on cuda]")
    p.add_argument("--max-seq-length", type=int, default=None,
                   help="[default: 512 on cpu, 2048 on cuda]")
    p.add_argument("--median-lines", type=float, default=None,
                   help="median function length of the synthetic data, in code lines "
                        "[default: 2 on cpu, 10 on cuda]")
    p.add_argument("--sigma", type=float, default=1.3,
                   help="log-normal shape of the lengths: larger, a longer tail")
    p.add_argument("--eval-examples", type=int, default=64)
    p.add_argument("--eval-batch", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=None,
                   help="[default: 2e-3 full, 2e-4 lora]")
    p.add_argument("--micro-batch", type=int, default=None,
                   help=f"(b)'s per-device batch; accumulation makes up {EXAMPLES_PER_UPDATE} "
                        "[default: the recipe's per_device_batch_size default (4); on cuda with "
                        f"--find-batch the largest divisor of {EXAMPLES_PER_UPDATE} that fits the "
                        "worst case]")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of both arms [default on cpu: what each arm of `train "
                        "run` gets here (half the CPUs); 0: torch's default]")
    p.add_argument("--dataloader-workers", type=int, default=0)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds; the order alternates (a b, b a, ...) against a drifting load")
    p.add_argument("--find-batch", action=argparse.BooleanOptionalAction, default=None,
                   help="search the largest per-device batch that fits [default: on with cuda]")
    p.add_argument("--arms", choices=("ab", "b"), default="ab",
                   help="b: only the recipe's arm (to compare a variant of it, e.g. --liger, "
                        "with an earlier run's (b) on the same machine)")
    p.add_argument("--liger", action="store_true",
                   help="Liger kernels (RMSNorm, SwiGLU, RoPE; the loss stays the recipe's) on "
                        "every model this run builds; CUDA with liger-kernel installed")
    p.add_argument("--all-logits", action="store_true",
                   help="(b) projects every position onto the vocabulary, not only the labelled")
    p.add_argument("--cudnn-attention", action="store_true",
                   help="put SDPA's cuDNN backend back after the recipe's load_model turned it off "
                        "(to measure what that costs)")
    p.add_argument("--masked-attention", action="store_true",
                   help="SDPA over each whole packed row with a block-diagonal mask, instead of "
                        "the recipe's per-example attention on CPU (to measure what that saves)")
    p.add_argument("--packed-attention", action="store_true",
                   help="the recipe's per-example attention on packed rows on CUDA too "
                        "(training/attention.py; the recipe keeps SDPA there until this is measured)")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    gpu = args.device == "cuda"
    args.model = args.model or ("llama3-8b" if gpu else "tiny-llama")
    random_shape = args.model in RANDOM_SHAPES
    args.method = args.method or ("lora" if random_shape else "full")
    if args.updates is None:
        args.updates = 6 if gpu else 8
    if args.max_seq_length is None:
        args.max_seq_length = 2048 if gpu else 512
    if args.median_lines is None:
        args.median_lines = 10.0 if gpu else 2.0
    if args.learning_rate is None:
        args.learning_rate = 2e-4 if args.method == "lora" else 2e-3
    args.find_batch = gpu if args.find_batch is None else args.find_batch
    if args.find_batch and not gpu:
        p.error("--find-batch needs --device cuda")
    if args.masked_attention and args.packed_attention:
        p.error("--masked-attention and --packed-attention are opposites: pick one")
    if args.liger and not gpu:
        p.error("--liger needs --device cuda (its kernels are Triton)")
    for name in ("updates", "max_seq_length", "eval_examples", "eval_batch", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not all(math.isfinite(v) for v in (args.median_lines, args.sigma, args.learning_rate)):
        p.error("--median-lines, --sigma and --learning-rate must be numbers")
    if args.median_lines <= 0 or args.sigma < 0 or args.learning_rate <= 0:
        p.error("--median-lines and --learning-rate must be positive, --sigma at least 0")
    if args.layers is not None and args.layers < 1:
        p.error("--layers must be at least 1")
    if (args.threads is not None and args.threads < 0) or args.dataloader_workers < 0:
        p.error("--threads and --dataloader-workers must be at least 0")
    if args.threads is None:
        from training.backends.local import threads_per_arm

        args.threads = 0 if gpu else threads_per_arm()
    if args.micro_batch is not None:
        try:
            arm_specs(args.micro_batch)
        except ValueError as e:
            p.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.liger:  # patches the Llama modules, so every model built after this uses them
        try:
            from liger_kernel.transformers import apply_liger_kernel_to_llama
        except ImportError:
            print("error: --liger needs the liger-kernel package", file=sys.stderr)
            return 2
        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    from training.base_model import reference
    from training.models import TINY_LLAMA, load_tokenizer

    random_shape = args.model in RANDOM_SHAPES
    args.base_model_name = TINY_LLAMA if random_shape else args.model
    try:
        tok_ref, _ = reference(TINY_LLAMA if random_shape else args.model, None)
        tokenizer = load_tokenizer(tok_ref)  # random shapes: the tiny tokenizer's ids
    except Exception as e:  # not a folder, shape or reachable hub id: one line, not a traceback
        print(f"error: --model {args.model}: {str(e).strip().splitlines()[0][:300]}",
              file=sys.stderr)
        return 2
    model_ref = args.model if random_shape else tok_ref

    n_train = EXAMPLES_PER_UPDATE * args.updates
    rows = synthetic_rows(n_train + args.eval_examples, args.seed, args.median_lines, args.sigma)
    train_rows, eval_rows = rows[:n_train], rows[n_train:]
    from training.data import encode_examples

    data = {"a_train": encode(train_rows, tokenizer, args.max_seq_length, True),
            "b_train": encode(train_rows, tokenizer, args.max_seq_length, False),
            "eval": encode_examples(eval_rows, tokenizer, args.max_seq_length)}
    lengths = sorted(len(x) for x in data["b_train"]["input_ids"])
    device = (torch.cuda.get_device_name(0) if args.device == "cuda"
              else f"cpu, {torch.get_num_threads()} threads")
    print(f"# {device}; torch {torch.__version__}; model {args.model} ({args.method}); "
          f"{args.updates} updates x {EXAMPLES_PER_UPDATE} examples; max length "
          f"{args.max_seq_length}; load {os.getloadavg()[0]:.2f}"
          f"{'; Liger kernels' if args.liger else ''}", flush=True)
    print(f"# train lengths: mean {statistics.fmean(lengths):.0f}, median "
          f"{lengths[len(lengths) // 2]}, p90 {lengths[int(len(lengths) * 0.9)]}, max {lengths[-1]}"
          f" ({sum(x >= args.max_seq_length for x in lengths)} cut at the max)", flush=True)

    best_batch = largest_batch(args, tokenizer, model_ref) if args.find_batch else None
    if best_batch is not None:
        print(f"# largest per-device batch that fits: {best_batch}", flush=True)
        if best_batch == 0:
            print("error: not even one max-length example fits", file=sys.stderr)
            return 1
    if args.micro_batch is None:
        from training.config import Training

        fit = Training.model_fields["per_device_batch_size"].default  # the recipe's default, 4
        if best_batch is not None:  # automatic batch sizing: the largest that fits, at most 16
            fit = min(best_batch, EXAMPLES_PER_UPDATE)
        args.micro_batch = max(d for d in range(1, fit + 1) if EXAMPLES_PER_UPDATE % d == 0)
    specs = arm_specs(args.micro_batch)
    print(f"# (b): per-device batch {args.micro_batch} x accumulation "
          f"{EXAMPLES_PER_UPDATE // args.micro_batch}", flush=True)
    runs: dict[str, list[Result]] = {"a": [], "b": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for key in ("ab" if r % 2 == 0 else "ba"):
                if key not in args.arms:
                    continue
                res = run_arm(args, specs[key], data, tokenizer, model_ref, Path(tmp))
                runs[key].append(res)
                print(f"# round {r + 1} ({key}): loop {res.loop_s:.1f} s (CPU {res.cpu_s:.1f} s), "
                      f"wall {res.wall_s:.1f} s, "
                      f"{res.tokens_per_second:,.0f} useful tok/s, eval {res.eval_loss:.4f}, "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)

    if args.arms == "b":
        return report_one(args, min(runs["b"], key=lambda x: x.loop_s))
    a, b = (min(runs[k], key=lambda x: x.loop_s) for k in "ab")  # the least disturbed of each
    if a.examples != b.examples:
        print("error: (a) and (b) did not see the same examples in the same order",
              file=sys.stderr)
        return 1
    extra = gpu_rows(args, (a, b))
    print()
    print(table(a, b, extra))
    print(f"same examples in the same order: yes ({len(a.examples)} examples)")
    if best_batch is not None:
        print(f"largest per-device batch that fits: {best_batch} packed examples of "
              f"{args.max_seq_length} tokens (worst case"
              f"{', gradient checkpointing' if args.gradient_checkpointing else ''})")
    ratios = [rb.tokens_per_second / ra.tokens_per_second
              for ra, rb in zip(runs["a"], runs["b"], strict=True)]
    if len(ratios) > 1:
        print("speedup per round: " + ", ".join(f"{x:.2f}" for x in ratios)
              + f" (median {statistics.median(ratios):.2f})")
    if args.device == "cpu":  # CPU time: what the arms cost in work, whatever else runs here
        ca, cb = (min(r.cpu_s for r in runs[k]) for k in "ab")
        print(f"speedup in CPU time (least of each): {ca / cb:.2f}")
    print(f"speedup: {b.tokens_per_second / a.tokens_per_second:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
