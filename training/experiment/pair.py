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


def split_replicate_id(pair_id: str) -> tuple[str, int] | None:
    """(parent pair id, k) of a replicate's id `<parent>-r<k>`, or None for a name of no such
    shape (which may still be a pair's own id)."""
    parent, sep, k = pair_id.rpartition("-r")
    return (parent, int(k)) if sep and parent and k.isdigit() else None


def replicate_ids(pair_id: str, replicates: int) -> list[str]:
    """One pair id per replicate: the pair id itself when there is one replicate."""
    if replicates == 1:
        return [pair_id]
    return [replicate_id(pair_id, k) for k in range(replicates)]


def clash(pair_id: str, replicates: int, other_id: str, other_parent: str | None) -> str | None:
    """Why a run tagged pair_id `other_id` (and parent_pair_id `other_parent`) belongs to another
    pair whose names collide with this one's (`pair_id` with `replicates` replicates), or None.

    A pair's names are its id and its replicates' ids (`<pair_id>-r<k>`); `train compare NAME`
    finds runs by either tag, so two pairs sharing a name would be mixed: `--pair-id x-r0` beside
    a replicated pair `x`, a replicated `x` beside a pair `x-r0`, or the id `x` reused with
    another number of replicates."""
    parent = other_parent or other_id
    ours = set(replicate_ids(pair_id, replicates))
    if parent == pair_id:
        if other_id in ours:
            return None  # this pair's own run
        return (f"pair {pair_id} already has a run {other_id!r} in another replicate layout "
                f"(this one's: {', '.join(sorted(ours))})")
    shared = sorted({other_id, parent} & (ours | {pair_id}))
    if shared:
        whose = f"replicate {other_id!r} of pair {parent!r}" if other_id != parent \
            else f"pair {other_id!r}"
        return f"{', '.join(repr(s) for s in shared)} is already the name of {whose}"
    return None
