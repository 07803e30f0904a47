"""The pair's identity: one rule for a pair id, one derivation, one replicate name.

A pair id names the Azure ML jobs (`<pair_id>-<arm>`), the local pair folder, the MLflow tag
`pair_id` and the registered models' tags, so one rule serves every backend: Azure ML's job-name
rule (the SDK lower-cases names, so ids are lower case from the start and lookups by name match).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from training.errors import BadInput

PAIR_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,200}")  # whole string: fullmatch
SWEEP = re.compile(r"-sweep(?=-|\Z)")  # '-sweep' is kept for the sweeps' job names
# what the arm's files hashed to when validated: handed from `train run` to each arm's process,
# which refuses a file replaced since (training.recipe.arm_data)
DATA_SHA256_ENV = "PAIRED_FINETUNE_DATA_SHA256"


class PairIdError(BadInput):
    """A pair id that breaks the rule (exit 2, before any request)."""


def pair_id_problem(pair_id: str) -> str | None:
    """Why `pair_id` cannot name a pair, or None."""
    if not isinstance(pair_id, str) or not PAIR_ID.fullmatch(pair_id):
        return ("lower-case letters, digits, '-' and '_' only, starting with a letter or digit, "
                "at most 201 characters (it names the Azure ML jobs, the pair folder and the "
                "MLflow runs' pair_id tag)")
    if SWEEP.search(pair_id):
        return "'-sweep' is kept for the sweeps' job names"
    return None


def check_pair_id(pair_id: str, what: str = "--pair-id") -> str:
    """`pair_id`, or PairIdError naming `what` (the option or argument it came from)."""
    if problem := pair_id_problem(pair_id):
        raise PairIdError(f"{what} {pair_id!r} is not a pair id: {problem}")
    return pair_id


def name_slug(name: str) -> str:
    """The experiment's name as the start of a pair id: lower case, '-' for anything else."""
    return SWEEP.sub("-sweeps", re.sub(r"[^a-z0-9-]", "-", name.lower()))


def derive_pair_id(name: str, config_sha256: str, identity: Iterable[tuple[str, str]]) -> str:
    """Same resolved config (the pinned base model revision included) and the same `identity`
    (in order: what else the backend trains with, then the data) -> the same pair id, so running
    or submitting again finds the pair instead of training it twice."""
    h = hashlib.sha256(config_sha256.encode())
    for key, value in identity:
        h.update(f"{key}={value}".encode())
    return f"{name_slug(name)}-{h.hexdigest()[:10]}"


def replicate_id(pair_id: str, k: int) -> str:
    """Seed replicate k of a pair (seed + k) is a pair of its own: `<pair_id>-r<k>`, under the
    same rule (a pair id near the length limit leaves no room for its replicates: refused)."""
    rid = f"{pair_id}-r{k}"
    if problem := pair_id_problem(rid):
        raise PairIdError(f"pair {pair_id!r}: its replicate id {rid!r} is not a pair id: "
                          f"{problem}; choose a shorter --pair-id or experiment name")
    return rid


def replicate_ids(pair_id: str, replicates: int) -> list[str]:
    """One pair id per replicate: the pair id itself when there is one replicate."""
    if replicates == 1:
        return [pair_id]
    return [replicate_id(pair_id, k) for k in range(replicates)]
