"""Paths the user hands us: what is wrong with one, said before anything opens it.

A FIFO opened for reading blocks forever, a symlink loop or a directory raises an OSError deep in
some library: each is turned here into one short reason, so a command can print `PATH: reason` and
exit 2 instead of hanging or printing a traceback.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

# A name that becomes one folder (a pair id): no separators, no "." or "..", no leading dot or dash.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z"

_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def file_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be read as a regular file, or None when it can. Never opens it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a broken symlink (to {os.readlink(path)}, which does not exist)"
        return "no such file"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop (too many levels of symbolic links)"
        if e.errno == errno.ENOTDIR:
            return "no such file (a parent of it is not a directory)"
        return e.strerror or str(e)
    if stat.S_ISDIR(st.st_mode):
        return "a directory, not a file"
    if not stat.S_ISREG(st.st_mode):
        return f"{_KINDS.get(stat.S_IFMT(st.st_mode), 'not a regular file')}, not a regular file"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)"
    return None


def dir_problem(path: str | os.PathLike, *, may_be_missing: bool = True) -> str | None:
    """Why `path` cannot be used as a folder (created if missing), or None when it can."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return "a broken symlink"
        parent = Path(path).absolute().parent
        if not may_be_missing:
            return "no such directory"
        return None if parent == Path(path).absolute() else dir_problem(parent)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop (too many levels of symbolic links)"
        if e.errno == errno.ENOTDIR:
            return "a parent of it is a file, not a directory"
        return e.strerror or str(e)
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return "not writable (permission denied)"
    return None


def name_problem(name: str) -> str | None:
    """Why `name` cannot be one folder inside another (`../x`, `a/b`, `.`, ``), or None."""
    if not re.match(NAME_PATTERN, name):
        return ("must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit "
                "(it names a folder inside --output-dir)")
    return None


def inside(child: Path, parent: Path) -> bool:
    """Whether `child`, symlinks resolved, lies inside `parent`."""
    return child.resolve().is_relative_to(parent.resolve())
