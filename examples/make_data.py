"""Regenerate the bundled sample data and the tiny model's tokenizer corpus (deterministic).

    python examples/make_data.py

The task: write a comment for a small Python function. Both arms see the same functions; they
differ only in the comments they learn from:
- control:    what the code does, in one terse line;
- experiment: why it is there, in one or two lines that name the intent and the edge case.
The shared eval set (other functions) holds experiment-style comments, the behaviour we want, so
the pair is compared on one yardstick.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
DATA = HERE / "data"
CORPUS = HERE.parent / "training" / "assets" / "tiny_corpus.txt"

SYSTEM = "You write short, useful code comments."

# (function template, what it does, why it exists, the edge case it handles)
FUNCTIONS = [
    ("def {f}({a}):\n    return [x for x in {a} if x is not None]",
     "Drop None values from {a}.", "Callers pass sparse rows; None would break the sum below.", "an empty list stays empty"),
    ("def {f}({a}, {b}):\n    return {a} / {b} if {b} else 0.0",
     "Divide {a} by {b}.", "A zero {b} means no data yet, which the report shows as 0.", "division by zero"),
    ("def {f}({a}):\n    return {a}.strip().lower()",
     "Normalise {a}.", "User input arrives with stray spaces and mixed case; keys must match.", "whitespace-only input becomes empty"),
    ("def {f}({a}, {b}):\n    return max({a}, min({b}, 100))",
     "Clamp {b} between {a} and 100.", "The progress bar breaks outside its range, so values are bounded here.", "a lower bound above 100"),
    ("def {f}({a}):\n    return sorted(set({a}))",
     "Sort the unique items of {a}.", "Duplicates come from retried uploads; the diff needs a stable order.", "unhashable items raise"),
    ("def {f}({a}):\n    return {a}[-1] if {a} else None",
     "Return the last item of {a}.", "The newest record wins; an empty history has no winner.", "an empty sequence"),
    ("def {f}({a}, {b}):\n    return {{k: v for k, v in {a}.items() if k in {b}}}",
     "Keep the keys of {a} listed in {b}.", "Only allow-listed fields may reach the log, for privacy.", "keys missing from {a} are skipped"),
    ("def {f}({a}):\n    return sum({a}) / len({a})",
     "Average {a}.", "The dashboard shows the mean latency per window.", "an empty window raises"),
    ("def {f}({a}):\n    return int({a}) if str({a}).isdigit() else None",
     "Parse {a} as an integer.", "Form fields are strings; non-numeric ones are treated as missing.", "negative numbers are rejected"),
    ("def {f}({a}, {b}):\n    return {a}[:{b}] + '...' if len({a}) > {b} else {a}",
     "Truncate {a} to {b} characters.", "Titles overflow the table cell; the ellipsis shows text was cut.", "short text is returned as is"),
    ("def {f}({a}):\n    return {a} % 2 == 0",
     "Check that {a} is even.", "Pairs are processed two at a time, so an odd count needs padding.", "negative numbers work too"),
    ("def {f}({a}):\n    return [{a}[i:i + 8] for i in range(0, len({a}), 8)]",
     "Split {a} into chunks of 8.", "The API accepts at most 8 items per request.", "the last chunk may be shorter"),
]
NAMES = ["clean", "safe_ratio", "normalize", "clamp", "unique_sorted", "latest", "pick_fields",
         "mean", "parse_int", "shorten", "is_even", "chunk"]
ARGS = ["items", "values", "text", "rows", "name", "total", "limit", "record", "data", "count",
        "fields", "batch", "scores", "history", "key"]
PREFIXES = ["", "get_", "compute_", "to_", "make_", "calc_"]


def examples(rng: random.Random, n: int, exclude: set | None = None):
    """n distinct functions (none of those in `exclude`, which collects what was drawn)."""
    seen = exclude if exclude is not None else set()
    drawn = 0
    while drawn < n:
        i = rng.randrange(len(FUNCTIONS))
        code, what, why, edge = FUNCTIONS[i]
        a, b = rng.sample(ARGS, 2)
        fill = dict(f=rng.choice(PREFIXES) + NAMES[i], a=a, b=b)
        source = code.format(**fill)
        if source in seen:
            continue  # duplicates teach nothing new and skew the loss
        seen.add(source)
        drawn += 1
        yield source, what.format(**fill), why.format(**fill), edge.format(**fill)


def chat(code: str, comment: str) -> dict:
    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Comment this function:\n{code}"},
        {"role": "assistant", "content": comment},
    ]}


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    drawn: set[str] = set()
    train = list(examples(random.Random(1), 320, drawn))
    write_jsonl(DATA / "control.jsonl", (chat(c, f"# {what}") for c, what, _, _ in train))
    write_jsonl(DATA / "experiment.jsonl",
                (chat(c, f"# {why}\n# Edge case: {edge}.") for c, _, why, edge in train))
    held_out = list(examples(random.Random(2), 64, drawn))  # disjoint from training
    write_jsonl(DATA / "eval.jsonl",
                (chat(c, f"# {why}\n# Edge case: {edge}.") for c, _, why, edge in held_out))

    # The tokenizer corpus: the task's vocabulary plus plain prose, fixed forever once written,
    # since the tiny model's cache key is this file's hash.
    lines = [SYSTEM, __doc__]
    for code, what, why, edge in examples(random.Random(3), 600):
        lines += [f"Comment this function:\n{code}", f"# {what}", f"# {why}", f"# Edge case: {edge}."]
    CORPUS.parent.mkdir(parents=True, exist_ok=True)
    CORPUS.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
