"""Checkpoints a resumed arm may trust, and the signal that asks for one.

A checkpoint folder is complete only once `COMPLETE` is written into it (after every rank's files
are on disk, `callbacks.MarkComplete`); a half-written one is never resumed from."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

log = logging.getLogger("training.recipe")

COMPLETE = "COMPLETE"  # written into a checkpoint folder once everything in it is on disk


def latest_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint that was written to the end; half-written ones are never picked up."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE).exists()]
    return max(done, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


class Preemption:
    """First SIGTERM/SIGINT: ask the Trainer to checkpoint and stop. Second: stop at once."""

    def __init__(self):
        self.signum: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt  # a second signal: give up; the marker keeps checkpoints safe
        self.signum = signum
        log.warning("%s received: checkpointing and stopping", signal.Signals(signum).name)
