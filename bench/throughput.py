"""Training throughput: the guide's recipe against this project's, on skewed-length chat data.

    .venv/bin/python bench/throughput.py                  # CPU, the tiny model, about 2 minutes
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
ratio of useful tokens per second is the ratio of training-loop times. The last line is `speedup: X.XX`.
See bench/README.md for the numbers and the MFU formula.

The code: this file (the arguments, the alternating rounds, the report), throughput_runs.py (one
arm's measured training loop; the GPU batch search) and throughput_setup.py (the synthetic data,
the arms' configurations, the random-weights shapes, the MFU arithmetic).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `training`
    sys.path.insert(0, str(REPO))
if str(REPO / "bench") not in sys.path:  # this script's modules, when the tests load it by path
    sys.path.append(str(REPO / "bench"))

# E402: these are this script's own modules, found through the path set just above
from throughput_runs import Result, largest_batch, run_arm  # noqa: E402
from throughput_setup import (  # noqa: E402
    EXAMPLES_PER_UPDATE,
    RANDOM_SHAPES,
    arm_specs,
    encode,
    gpu_peak_tflops,
    mfu,
    synthetic_rows,
)


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
        from training.local.backend import threads_per_arm

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
    from training.experiment.base_model import reference
    from training.experiment.models import TINY_LLAMA, load_tokenizer

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
        from training.experiment.config import Training

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
