"""Per-example eval losses: what lets `train compare` pair the two arms example by example.

At the final evaluation the recipe scores every eval example on its own (the mean cross-entropy
over its labelled tokens: the assistant turns of a chat, the completion of a prompt/completion row)
and writes one JSON line per example to `eval_examples.jsonl` in the arm's folder and its MLflow
run:

    {"index": 0, "sha256": "3f2a...", "tokens": 41, "loss": 2.7183}

`index` is the example's position in the eval file and `sha256` the hash of its content (the
canonical JSON of the row), so both arms' lines pair up by index and compare can prove they saw
the same examples. `loss` is null for an example with no labelled token (e.g. truncated away).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

FILENAME = "eval_examples.jsonl"
IGNORE_INDEX = -100


def content_hash(row: dict) -> str:
    """sha256 of the row's canonical JSON (key order and whitespace do not matter)."""
    text = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def example_losses(model, encoded: list[dict], batch_size: int, device) -> list[tuple[int, float]]:
    """(labelled tokens, mean loss over them) for every encoded example, in order.

    Run it on every rank of a distributed job (a sharded model needs all ranks in its forward);
    each rank scores all examples, which costs one extra pass over the eval set."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    results: list[tuple[int, float]] = [(0, math.nan)] * len(encoded)
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                width = max(len(encoded[i]["input_ids"]) for i in idx)
                ids = torch.zeros((len(idx), width), dtype=torch.long)
                labels = torch.full((len(idx), width), IGNORE_INDEX, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):  # right padding: causal attention ignores it
                    n = len(encoded[i]["input_ids"])
                    ids[row, :n] = torch.tensor(encoded[i]["input_ids"])
                    labels[row, :n] = torch.tensor(encoded[i]["labels"])
                    mask[row, :n] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                target = labels[:, 1:].to(device)  # token t is predicted from positions < t
                token_loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target,
                                             ignore_index=IGNORE_INDEX, reduction="none")
                scored = target != IGNORE_INDEX
                sums = (token_loss * scored).sum(1).cpu().tolist()
                counts = scored.sum(1).cpu().tolist()
                for row, i in enumerate(idx):
                    results[i] = (counts[row], sums[row] / counts[row] if counts[row] else math.nan)
    finally:
        model.train(was_training)
    return results


def records(rows: list[dict], losses: list[tuple[int, float]]) -> list[dict]:
    return [{"index": i, "sha256": content_hash(row), "tokens": tokens,
             "loss": loss if math.isfinite(loss) else None}
            for i, (row, (tokens, loss)) in enumerate(zip(rows, losses, strict=True))]


def write(path: Path, recs: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    tmp.replace(path)


def parse(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
