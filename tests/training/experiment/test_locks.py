import os
import signal
import subprocess
import sys

import pytest

from training.experiment import locks

HOLD = """
import sys, time
from pathlib import Path
from training.experiment import locks
locks.acquire(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(600)  # killed by the test
"""


def hold_in_child(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_naming_the_first_and_a_kill_releases_it(tmp_path):
    folder = tmp_path / "control"
    proc = hold_in_child(folder)
    try:
        with pytest.raises(locks.Busy) as err:
            locks.acquire(folder)
        assert f"{folder} is being trained by pid {proc.pid} on " in str(err.value)
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean-up at all: the kernel drops the lock
        proc.wait()
    lock = locks.acquire(folder)
    try:
        assert lock.fd is not None
        assert locks.acquire(folder) is lock  # this process again: the same lock
    finally:
        lock.release()


def test_an_arm_adopts_the_lock_handed_down_and_not_another(tmp_path, monkeypatch):
    folder, other = tmp_path / "a", tmp_path / "b"
    lock = locks.acquire(folder)
    other_lock = locks.acquire(other)
    try:
        code = ("import sys; from pathlib import Path; from training.experiment import locks\n"
                "try:\n    l = locks.adopt_or_acquire(Path(sys.argv[1])); print('ok', l.fd)\n"
                "except locks.Busy as e:\n    print('busy')\n")
        env = {**os.environ, locks.FD_ENV: str(lock.fd)}
        ok = subprocess.run([sys.executable, "-c", code, str(folder)], env=env,
                            pass_fds=(lock.fd,), capture_output=True, text=True, timeout=60)
        assert ok.stdout.split() == ["ok", str(lock.fd)], ok.stderr
        # the descriptor of another folder's lock is not adopted: this one stays refused
        wrong = subprocess.run([sys.executable, "-c", code, str(other)], env=env,
                               pass_fds=(lock.fd,), capture_output=True, text=True, timeout=60)
        assert wrong.stdout.strip() == "busy", wrong.stderr
    finally:
        lock.release()
        other_lock.release()


def test_the_recorded_command_has_no_password(tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(sys, "argv", ["train", "run", "--tracking-uri",
                                      "https://alice:S3CRET@mlflow.example.com/"])
    lock = locks.acquire(tmp_path / "arm")
    try:
        record = json.loads((tmp_path / "arm" / locks.LOCK_FILE).read_text())
        assert record["command"] == "train run --tracking-uri https://mlflow.example.com/"
    finally:
        lock.release()
