"""Errors and exit codes of `train`, one place for both.

Exit codes: 0 success; 1 a job or check failed; 2 bad input (config, data, arguments, stack
outputs), reported before anything is trained or submitted; 130 interrupted.

Every domain error derives from `BadInput` (exit 2) or `Failed` (exit 1); the CLI's one translator
(`training.cli.common.translate_errors`) prints its message as one line and exits with its code.
"""

from __future__ import annotations

import sys

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130


class TrainError(Exception):
    """An error the user is told about in one line; `exit_code` is what `train` exits with."""

    exit_code = EXIT_FAILED


class BadInput(TrainError):
    """The user's input cannot work (config, data, arguments, stack outputs): exit 2, nothing
    trained or submitted."""

    exit_code = EXIT_BAD_INPUT


class Failed(TrainError):
    """A job, a request or a check failed: exit 1."""

    exit_code = EXIT_FAILED


def exit_interrupted() -> None:
    """Exit 130 after a Ctrl-C the command handled.

    Under `python -m`, CPython turns any exit into death by SIGINT (status -2) once a
    KeyboardInterrupt has left code that a C extension ran with PyRun_String (pybind11's
    `py::exec`, during torch's import): a flag set there outlives the `except` that handled it.
    Running any code the same way clears that flag, so the handled interrupt exits 130 as
    documented."""
    try:
        import ctypes

        ctypes.pythonapi.PyRun_SimpleString(b"pass")
    except (ImportError, AttributeError, OSError):  # not CPython: no such flag either
        pass
    sys.exit(EXIT_INTERRUPTED)
