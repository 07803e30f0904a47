"""What bench/throughput.py's two arms are built from: the synthetic chat data, the arms' batch
shapes and experiment files, their collators and encodings, the random-weights model shapes; and
the FLOP arithmetic its GPU mode turns into MFU.

Nothing here trains or times anything: that is throughput_runs.py. torch, transformers and
`training` are imported inside the functions, as in the rest of the script, so that `--help` and
the tests do not wait for them.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from throughput_runs import Result

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
    from training.experiment.config import ExperimentConfig

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


def make_collator(spec: ArmSpec, tokenizer, max_len: int, cuda: bool = False,
                  all_logits: bool = False):
    from transformers import DataCollatorForSeq2Seq

    from training.recipe.collate import make_collator as recipe_collator

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


# --------------------------------------------------------------------------- random-weights shapes
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
    from training.plan.model_shape import model_shape

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


# --------------------------------------------------------------------------- MFU (GPU mode)
def mfu(result: Result, method: str, gradient_checkpointing: bool, peak_tflops: float):
    """(MFU with train estimate's formula, MFU by the strict 6·N_trainable + 4·N_frozen)."""
    from training.plan.estimate import flops_per_token

    per_token, _ = flops_per_token(method, result.n_params, gradient_checkpointing)
    frozen = result.n_params - result.n_trainable
    strict = 6 * result.n_trainable + 4 * frozen
    rate = peak_tflops * 1e12
    return (per_token * result.tokens_per_second / rate, strict * result.tokens_per_second / rate)


def gpu_peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of the GPU, from its name (training/hardware.py's table)."""
    from training.plan import hardware

    n = name.lower()
    for key, acc in (("h100 nvl", hardware.H100_NVL), ("h100", hardware.H100),
                     ("h200", hardware.H100), ("a100", hardware.A100_80)):
        if key in n:
            return acc.peak_tflops  # H200: the same H100 tensor cores (989 TFLOP/s dense bf16)
    return None
