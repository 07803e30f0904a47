"""Ctrl-C and SIGTERM around `train run` and `train data validate`. While preparing, a signal
stops the command (exit 130, nothing written); between replicates or after the arms finished, it
is noted, never a traceback. During the arms' training `LocalPair.stop` handles it."""

from __future__ import annotations

import signal


class LateStop:
    """SIGINT/SIGTERM outside a pair's run (between replicates, after the arms): remembered."""

    def __init__(self):
        self.seen = False
        self.previous = {s: signal.signal(s, self._note) for s in (signal.SIGINT, signal.SIGTERM)}

    def _note(self, signum, frame):
        self.seen = True

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class interruptible:
    """While preparing: SIGTERM behaves like Ctrl-C (KeyboardInterrupt, exit 130 by the caller),
    not a silent death; the previous handlers come back afterwards. A signal that lands while
    Python runs a finalizer or weakref callback (the import system's module locks, while the heavy
    libraries load) cannot raise there ("Exception ignored in ..."): it is remembered, and
    `check()` (before anything is written) or the end of the block raises it."""

    pending = False

    def __enter__(self):
        def interrupt(signum, frame):
            interruptible.pending = True
            raise KeyboardInterrupt

        interruptible.pending = False
        self.previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, exc_type, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        if exc_type is None:
            interruptible.check()

    @staticmethod
    def check() -> None:
        if interruptible.pending:
            raise KeyboardInterrupt
