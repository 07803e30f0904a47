"""Useful tokens per second with padding-free packing vs padding, through the real recipe.

    .venv/bin/python bench/bench_packing.py [--steps 60] [--base-model tiny-llama]

Trains the same arm twice with `training.packing` true and false and prints the comparison. Useful
tokens are non-padding tokens, the same count in both runs per step, so the ratio is the speed-up.
The gain grows with length skew: the bundled data is short and uniform, so expect a modest gain
here; on skewed chat data padding to the batch maximum wastes far more.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run(packing: bool, steps: int, base_model: str, folder: Path) -> dict:
    cfg = yaml.safe_load((REPO / "experiments" / "local.yaml").read_text())
    cfg["base_model"] = base_model
    cfg["training"].update(max_steps=steps, packing=packing, eval_every=steps, save_every=steps)
    for arm in ("control", "experiment"):
        cfg["arms"][arm]["train"] = str(REPO / "examples" / "data" / f"{arm}.jsonl")
    cfg["eval"] = str(REPO / "examples" / "data" / "eval.jsonl")
    path = folder / f"packing-{packing}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = folder / f"packing-{packing}"
    done = subprocess.run([sys.executable, "-m", "training.recipe", "--config", str(path),
                           "--arm", "experiment", "--output-dir", str(out), "--pair-id", "bench"],
                          cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PAIRED_FINETUNE_NO_MLFLOW": "1"})
    if done.returncode != 0:  # the recipe's own reason, not a CalledProcessError traceback
        lines = (done.stderr or done.stdout).strip().splitlines()
        sys.exit(f"error: the recipe exited {done.returncode}: " + "\n".join(lines[-5:]))
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--base-model", default="tiny-llama")
    args = p.parse_args()
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if Path(args.base_model).exists():  # a folder is relative to here, not the temp config
        args.base_model = str(Path(args.base_model).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        packed = run(True, args.steps, args.base_model, Path(tmp))
        padded = run(False, args.steps, args.base_model, Path(tmp))
    print(f"{'batches':<12}{'useful tok/s':>14}{'eval loss':>12}")
    for name, m in (("padded", padded), ("packed", packed)):
        print(f"{name:<12}{m['tokens_per_second']:>14,.0f}{m['eval_loss']:>12.4f}")
    print(f"speed-up: {packed['tokens_per_second'] / padded['tokens_per_second']:.2f}x "
          f"(same {packed['tokens_seen']:,} useful tokens in both: "
          f"{packed['tokens_seen'] == padded['tokens_seen']})")


if __name__ == "__main__":
    main()
