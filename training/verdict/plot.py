"""The compare figure (`train compare --plot FILE.png`): loss curves and per-example differences.

Left: train (solid) and eval (dashed, dots) loss of both arms against the optimizer step; with seed
replicates each one is a thin line and their mean a bold one. Right: the distribution of the
per-example differences (experiment - control) with their mean and its 95% bootstrap interval.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.experiment.config import ARMS

COLORS = {"control": "tab:blue", "experiment": "tab:orange"}
STYLE = {"train_loss": {"ls": "-"}, "eval_loss": {"ls": "--", "marker": "o", "ms": 3}}
LABEL = {"train_loss": "train", "eval_loss": "eval"}


def _mean_curve(curves: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over replicates at the steps all of them logged."""
    common = set.intersection(*({s for s, _ in c} for c in curves))
    steps = np.array(sorted(common))
    values = [dict(c) for c in curves]
    return steps, np.array([np.mean([v[s] for v in values]) for s in steps])


def plot(report: dict, runs: dict, diffs, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), constrained_layout=True)
    multi = len(runs) > 1
    for arm in ARMS:
        for key, style in STYLE.items():
            curves = [r[arm].curves.get(key) or [] for r in runs.values()]
            curves = [c for c in curves if c]
            if not curves:
                continue
            if multi:
                for c in curves:
                    s, v = zip(*c, strict=True)
                    left.plot(s, v, color=COLORS[arm], lw=0.7, alpha=0.35, ls=style["ls"])
            steps, mean = _mean_curve(curves)
            label = f"{arm} {LABEL[key]}" + (f" (mean of {len(curves)})" if multi else "")
            left.plot(steps, mean, color=COLORS[arm], lw=2, label=label, **style)
    left.set(title="Loss curves" + (" (thin: each seed replicate)" if multi else ""),
             xlabel="optimizer step", ylabel="loss (nats per token)")
    left.grid(alpha=0.3)
    left.legend()

    p = report.get("paired")
    if diffs is not None and p:
        d = np.asarray(diffs)
        right.hist(d, bins=min(40, max(10, d.size // 4)), color="tab:gray", alpha=0.75,
                   label=f"{d.size} examples")
        right.axvline(0, color="black", lw=1, label="no difference")
        if p["ci_low"] is not None:  # one example has no interval
            right.axvspan(p["ci_low"], p["ci_high"], color="tab:red", alpha=0.25,
                          label=f"95% CI of the mean [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]"
                          + ("" if p.get("enough", True) else " (too few examples)"))
        right.axvline(p["mean_diff"], color="tab:red", lw=2,
                      label=f"mean {p['mean_diff']:+.3f}")
        right.set(title="Per-example eval loss, experiment - control"
                        + ("\n(each example: mean over replicates)" if multi else ""),
                  xlabel="loss difference (nats per token); below 0: experiment better",
                  ylabel="examples")
        right.legend(fontsize="small")
        right.grid(alpha=0.3)
    else:
        right.set_axis_off()
        right.text(0.5, 0.5, "no per-example comparison:\n" + "\n".join(report["notes"][:3]),
                   ha="center", va="center", wrap=True)
    fig.suptitle(f"pair {report['pair_id']}: {report['verdict']['summary']}", fontsize="medium",
                 wrap=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
