"""The recipe's progress events: one JSON object per stdout line, after `@@ `.

The recipe emits them on rank 0 (`emit`); the local backend reads them from each arm's output to
draw live progress (`parse_event`), and so do the tests. Any other line is the arm's log.

    @@ {"event": "log", "step": 10, "max_steps": 100, "train_loss": 2.31, ...}

Events: start, log, eval, preempted, done (with the final metrics).
"""

from __future__ import annotations

import json
import os

EVENT_PREFIX = "@@ "


def rank() -> int:
    """This process's global rank (0 without torch.distributed)."""
    return int(os.environ.get("RANK", "0"))


def emit(event: str, **fields) -> None:
    """A machine-readable progress line on rank 0; nothing on the other ranks."""
    if rank() == 0:
        print(EVENT_PREFIX + json.dumps({"event": event, **fields}), flush=True)


def parse_event(line: str) -> dict | None:
    """The event on an output line, or None for any other line (or a garbled event)."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        event = json.loads(line[len(EVENT_PREFIX):])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None
