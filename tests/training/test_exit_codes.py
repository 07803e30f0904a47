"""A handled Ctrl-C exits 130 even when the KeyboardInterrupt first left code run by a C
extension (the CI failure: `python -m training.cli run` died by SIGINT, status -2)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.training.pairs import REPO

# what torch's import does when the Ctrl-C lands in it: code run with PyRun_String raises
PROGRAM = textwrap.dedent("""
    import ctypes, sys
    from training.errors import exit_interrupted
    try:
        if ctypes.pythonapi.PyRun_SimpleString(b"raise KeyboardInterrupt") != 0:
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        exit_interrupted() if sys.argv[1] == "fixed" else sys.exit(130)
""")


@pytest.mark.parametrize("how, status", [("fixed", 130), ("plain", -2)])
def test_a_handled_interrupt_exits_130_under_python_m(tmp_path, how, status):
    (tmp_path / "interrupted.py").write_text(PROGRAM)
    done = subprocess.run([sys.executable, "-m", "interrupted", how], cwd=tmp_path,
                          env={"PYTHONPATH": f"{tmp_path}:{REPO}"}, capture_output=True)
    # "plain" shows the trap is real on this interpreter; "fixed" is what every command does
    assert done.returncode == status, done.stderr.decode()
