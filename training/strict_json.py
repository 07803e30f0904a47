"""Strict JSON, the one rule for every JSON the product writes (`--format json`, reports): NaN and
infinity are not JSON, so an unknown or undefined number is `null`."""

from __future__ import annotations

import json
import math


def finite(value):
    """`value` (dicts, lists, numbers) with every NaN or infinity replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def number(value) -> float | None:
    """`value` (a number, or a logged param's string) as a finite float; None otherwise."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def dumps(value, **kwargs) -> str:
    """json.dumps of `finite(value)` that refuses a NaN (`allow_nan=False`)."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)
