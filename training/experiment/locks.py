"""One writer per arm folder: an exclusive `flock` on `<arm>/.lock`.

The lock belongs to an open file, so the kernel releases it when the process holding it dies, however
it dies: a crash or `kill -9` never leaves a stale lock. `train run` takes the lock of every arm it
is about to run and hands the open file to the arm's process (its descriptor number in
PAIRED_FINETUNE_LOCK_FD), so the lock is held as long as either of them lives; a recipe started on
its own (a cluster job, by hand) takes the lock itself. The file holds who took it, so a refused
run can name the running one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from training.errors import BadInput
from training.experiment.tracking import redacted

LOCK_FILE = ".lock"
FD_ENV = "PAIRED_FINETUNE_LOCK_FD"


class Busy(BadInput):
    """Another process holds the arm's lock; the message names it."""


class ArmLock:
    def __init__(self, folder: Path, fd: int | None):
        self.folder, self.fd = folder, fd

    def release(self) -> None:
        _HELD.pop(self.folder, None)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


_HELD: dict[Path, ArmLock] = {}  # folders this process has locked


def holder(folder: Path) -> str:
    """Who holds (or last held) the lock of `folder`, for a message."""
    try:
        info = json.loads((folder / LOCK_FILE).read_text())
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"pid {info['pid']} on {info['host']}, started {started}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def acquire(folder: Path) -> ArmLock:
    """Lock `folder` (created if missing) for this process; Busy when another process has it.

    On a file system without flock (some network mounts) the folder is used unlocked. Locking a
    folder this process holds already returns its lock."""
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _HELD:
        return _HELD[key]
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise Busy(f"{folder} is being trained by {holder(folder)}") from None
        return ArmLock(folder, None)  # ENOLCK, EOPNOTSUPP...: no locking there
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": redacted(" ".join(os.path.basename(a) if i == 0 else a
                                           for i, a in enumerate(sys.argv)))[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    _HELD[key] = ArmLock(key, fd)
    return _HELD[key]


def adopt_or_acquire(folder: Path) -> ArmLock:
    """In an arm's process: the lock `train run` passed down (PAIRED_FINETUNE_LOCK_FD), else its own."""
    fd = os.environ.get(FD_ENV)
    if fd and fd.isdigit():
        try:
            st, mine = os.fstat(int(fd)), os.stat(folder / LOCK_FILE)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                fcntl.flock(int(fd), fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: at once
                return ArmLock(folder, int(fd))
        except OSError:
            pass  # not this folder's lock: lock as if started alone
    return acquire(folder)


def submit_lock(pair_id: str, on_note) -> ArmLock:
    """Two `train submit` of one pair at once (a CI re-run, a double Enter) would both find no
    job and create two pairs under one id: on this machine, the second is refused (Busy). The
    lock (in $PAIRED_FINETUNE_LOCK_DIR, else the temp folder) is held until the jobs exist."""
    import os
    import tempfile

    root = Path(os.environ.get("PAIRED_FINETUNE_LOCK_DIR") or tempfile.gettempdir())
    folder = root / f"paired-finetune-submit-{os.getuid()}" / pair_id  # one user's own folder
    try:
        return acquire(folder)
    except Busy:
        raise Busy(f"another `train submit` of pair {pair_id} is running "
                   f"({holder(folder)})") from None
    except OSError as e:  # no lock to be had here (permissions, a read-only temp folder)
        on_note(f"submitting without the per-pair lock ({e.strerror or e})")
        return ArmLock(folder, None)
