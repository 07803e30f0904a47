"""How fast `train data validate` is on a big file.

Writes N synthetic chat rows (default a million) to a temporary JSONL file, then times
`training.data.validate_files` without a tokenizer (parse and structural checks), with the tiny
Llama's tokenizer (exact token counts of every example, by the counter's Llama-3 shortcut, its
pieces counted by `fast_bpe`), optionally with the Hugging Face tokenizer counting the pieces
(`--hf-tokenizer`: the path of a tokenizer `fast_bpe` does not reproduce, and the figure before
it), and optionally with the training encoder on every row (`encode_chats`: the path that any
template other than Llama-3's markup takes). Prints rows/s and compares with the target; every
path must count the same lengths.

    .venv/bin/python bench/bench_validate.py                 # 1,000,000 rows
    .venv/bin/python bench/bench_validate.py --hf-tokenizer  # and the same without fast_bpe
    .venv/bin/python bench/bench_validate.py --rows 200000 --encoder
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SYSTEMS = [
    "You write short, useful code comments.",
    "You are a careful reviewer. Explain why the code exists, not what it does.",
    "Answer in one or two sentences.",
]
VERBS = ["parse", "load", "merge", "clean", "sort", "count", "split", "render", "check", "fetch"]
NOUNS = [
    "rows",
    "items",
    "users",
    "scores",
    "batch",
    "records",
    "names",
    "fields",
    "events",
    "keys",
]
EXPRS = [
    "sorted(set({a}))",
    "[x for x in {a} if x is not None]",
    "{a}.strip().lower()",
    "sum({a}) / len({a}) if {a} else 0.0",
    "{{k: v for k, v in {a}.items() if k in {b}}}",
    "{a}[:{b}] + '...' if len({a}) > {b} else {a}",
]
REASONS = [
    "Callers pass sparse {a}; None would break the sum below.",
    "Duplicates come from retried uploads; the diff needs a stable order.",
    "User input arrives with stray spaces and mixed case; keys must match.",
    "The dashboard shows the mean of {a} per window.",
    "Titles overflow the table cell; the ellipsis shows {a} was cut.",
]
EDGES = [
    "an empty list stays empty.",
    "division by zero.",
    "unhashable items raise.",
    "{b} may be None.",
]


def synthetic_rows(n: int, seed: int = 0):
    rng = random.Random(seed)
    for i in range(n):
        a, b = rng.choice(NOUNS), rng.choice(NOUNS)
        name = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}_{i % 997}"
        code = f"def {name}({a}, {b}):\n    return {rng.choice(EXPRS).format(a=a, b=b)}"
        answer = f"# {rng.choice(REASONS).format(a=a, b=b)}\n# Edge case: {rng.choice(EDGES).format(a=a, b=b)}"
        yield {
            "messages": [
                {"role": "system", "content": rng.choice(SYSTEMS)},
                {"role": "user", "content": f"Comment this function:\n{code}"},
                {"role": "assistant", "content": answer},
            ]
        }


def write_rows(path: Path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in synthetic_rows(n))


def timed(label: str, n: int, target_s: float, fn):
    start = time.perf_counter()
    report = fn()
    elapsed = time.perf_counter() - start
    rate = n / elapsed
    per_million = 1_000_000 / rate
    verdict = "meets" if per_million <= target_s else "MISSES"
    print(
        f"{label:<34} {elapsed:7.2f} s  {rate:>10,.0f} rows/s  "
        f"-> {per_million:5.1f} s per million rows ({verdict} the {target_s:.0f} s target)"
    )
    return report, elapsed


def _not_ok(report, args) -> int:
    print(f"error: the generated rows do not pass validation (--max-seq-length "
          f"{args.max_seq_length}?): {report.problems[0]}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--model", default="tiny-llama", help="tokenizer: tiny-llama or a local path"
    )
    parser.add_argument("--max-seq-length", type=int, default=2048)
    parser.add_argument(
        "--target-seconds",
        type=float,
        default=60.0,
        help="target for a million rows with the tokenizer",
    )
    parser.add_argument(
        "--encoder",
        "--jinja",
        dest="encoder",
        action="store_true",
        help="also time the training encoder on every row (the path of any non-Llama-3 template)",
    )
    parser.add_argument(
        "--hf-tokenizer",
        action="store_true",
        help="also time the counter with the Hugging Face tokenizer counting the pieces (no fast_bpe)",
    )
    args = parser.parse_args(argv)
    if args.rows < 1 or args.max_seq_length < 1:
        parser.error("--rows and --max-seq-length must be at least 1")
    if not math.isfinite(args.target_seconds) or args.target_seconds <= 0:
        parser.error("--target-seconds must be a positive number")

    from training import data
    from training.experiment.models import load_tokenizer, resolve_base_model

    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        path = Path(tmp) / "chat.jsonl"
        start = time.perf_counter()
        write_rows(path, args.rows)
        size = path.stat().st_size
        print(
            f"wrote {args.rows:,} chat rows ({size / 1e6:,.0f} MB) in {time.perf_counter() - start:.1f} s"
            f" on {os.cpu_count()} CPUs"
        )

        try:
            tokenizer = load_tokenizer(resolve_base_model(args.model))
        except Exception as e:  # not tiny-llama, a folder or a hub id: one line
            print(f"error: --model {args.model}: {str(e).strip().splitlines()[0][:300]}",
                  file=sys.stderr)
            return 2
        n = args.rows
        report, _ = timed(
            "without tokenizer", n, args.target_seconds, lambda: data.validate_files([path])
        )
        if not report.ok:  # a bad --max-seq-length, not the bench: say so, no traceback
            return _not_ok(report, args)
        report, _ = timed(
            "with tokenizer (exact lengths)",
            n,
            args.target_seconds,
            lambda: data.validate_files(
                [path], tokenizer=tokenizer, max_seq_length=args.max_seq_length
            ),
        )
        if not report.ok:
            return _not_ok(report, args)
        stats = report.files[0].tokens
        print(
            f"  tokens per row: min {stats.min} p50 {stats.median} p95 {stats.p95} max {stats.max} "
            f"mean {stats.mean:.1f}; {stats.mean * n / 1e6:,.1f} M tokens counted"
        )
        from training.data import token_counter

        # (label, object, attribute, replacement, what a difference would mean)
        variants = []
        if args.hf_tokenizer:
            variants.append(("without fast_bpe", token_counter, "fast_counter",
                             lambda backend: None, "the Hugging Face tokenizer"))
        if args.encoder:  # the path of any non-Llama-3 template
            variants.append(("encoder per row", data.TokenCounter, "_chat_mode",
                             lambda self: "encoder", "the encoder"))
        for label, owner, name, replacement, who in variants:
            original = getattr(owner, name)
            setattr(owner, name, replacement)
            try:
                other, _ = timed(
                    f"with tokenizer, {label}",
                    n,
                    args.target_seconds,
                    lambda: data.validate_files(
                        [path], tokenizer=tokenizer, max_seq_length=args.max_seq_length
                    ),
                )
            finally:
                setattr(owner, name, original)
            assert other.files[0].tokens == stats, f"{who} counts differently"
            print(f"  {label}: same lengths")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
