"""Is the pair fair? Each field an arm's run logged is judged by its class in
`training.experiment.tracking.FIELDS`:

- a setting (the experiment file, the code, the base model, the eval set) must be equal in both
  arms, and in every replicate of an arm but for the seed; a param missing from the table is
  compared as a setting;
- a data fact (the arm's training data: its hash and row count, the rows cut or dropped for
  max_seq_length) may differ: that is the point of the pair. The rows lost are shown side by side
  (`data_facts`), and the pair is flagged only when the shared eval set was treated differently
  in the two arms, or when the arms' shares of training rows lost are more than SKEW_GAP apart;
- a result or the run's identity (arm, pair id) is never compared.
"""

from __future__ import annotations

import math

from training.experiment.tracking import SETTING, field_class
from training.strict_json import number

# What may differ between replicates of the same arm (the seed, so the config's hash).
REPLICATE_PARAMS = {"training.seed", "config_sha256"}
# The most the two arms' shares of training rows lost to max_seq_length may differ. The rows
# lost are the longest ones, not a random sample: when the cut falls on one arm much more than
# on the other, the pair measures that arm's data without its longest rows against the other's
# whole data, a difference the pair was not meant to measure. 5 points: below it the cut is a
# small tail on either side (both shares are shown); a convention, like the 5% test level.
SKEW_GAP = 0.05


def compared(key: str) -> bool:
    """Whether the param must be equal in both arms: a setting, or a param of no known class."""
    return field_class(key) in (SETTING, None)


def differences(a: dict, b: dict, between: str, replicate: int,
                allowed: frozenset | set = frozenset()) -> list[dict]:
    """Settings that differ (or exist on one side only), except the allowed ones."""
    keys = sorted(k for k in a.keys() | b.keys() if compared(k) and k not in allowed)
    return [{"replicate": replicate, "between": between, "param": k, "values": [a.get(k), b.get(k)]}
            for k in keys if a.get(k) != b.get(k)]


def _int(value) -> int | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return int(x) if math.isfinite(x) else None


def _share(part: int | None, whole: int | None) -> float | None:
    return part / whole if part is not None and whole else None


def data_facts(params: dict, eval_examples: int | None = None) -> dict:
    """The arm's data as it reached training: rows in the file, rows cut or dropped for
    max_seq_length (`training.long_examples`) and their share, for the training rows and the eval
    rows; `eval_examples` (when known, e.g. from the per-example losses) the eval examples scored.
    A run of the recipe logged the counts only when one was non-zero before they were always
    logged: a recipe run (one with a long_examples policy) without them lost nothing. None where
    unknown (a hosted run)."""
    policy = params.get("training.long_examples")
    recipe = policy not in (None, "", "None")
    rows = _int(params.get("data.train_rows"))
    shared = bool(params.get("data.eval_sha256"))
    if shared:
        train_rows, eval_rows = rows, _int(params.get("data.eval_rows"))
    else:  # a holdout of the arm's own rows (recipe.arm_data.split_holdout)
        fraction = number(params.get("training.eval_fraction"))
        eval_rows = max(1, round(rows * fraction)) if rows and fraction else None
        train_rows = rows - eval_rows if rows is not None and eval_rows is not None else rows
    train_lost = _int(params.get("data.train_too_long"))
    eval_lost = _int(params.get("data.eval_too_long"))
    if recipe:
        train_lost, eval_lost = train_lost or 0, eval_lost or 0
    if eval_examples is None and eval_rows is not None:  # truncate keeps the rows it cuts
        eval_examples = eval_rows - (eval_lost or 0) if policy == "drop" else eval_rows
    return {"long_examples": policy if recipe else None, "train_rows": train_rows,
            "train_lost": train_lost, "train_lost_share": _share(train_lost, train_rows),
            "eval_shared": shared, "eval_rows": eval_rows, "eval_lost": eval_lost,
            "eval_lost_share": _share(eval_lost, eval_rows), "eval_examples": eval_examples}


def data_problems(facts: dict[str, dict], replicate: int) -> list[dict]:
    """The pair's data facts that make it unfair, as `differences` lists them: the shared eval set
    cut or dropped differently in the two arms, or shares of training rows lost more than
    SKEW_GAP apart."""
    c, e = facts["control"], facts["experiment"]
    out = []
    if c["eval_shared"] and e["eval_shared"] and c["eval_lost"] != e["eval_lost"]:
        out.append({"replicate": replicate, "between": "control vs experiment",
                    "param": "shared eval rows over max_seq_length (data.eval_too_long)",
                    "values": [c["eval_lost"], e["eval_lost"]]})
    cs, es = c["train_lost_share"], e["train_lost_share"]
    if cs is not None and es is not None and abs(cs - es) > SKEW_GAP:
        out.append({"replicate": replicate, "between": "control vs experiment",
                    "param": f"share of training rows over max_seq_length (more than "
                             f"{SKEW_GAP:.0%} apart: skewed)",
                    "values": [round(cs, 4), round(es, 4)]})
    return out


