"""Exit codes of `train`, shared by every command: 0 success; 1 a job or check failed; 2 bad input
(config, data, arguments), reported before anything is trained or submitted; 130 interrupted."""

from __future__ import annotations

import sys

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130


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
