"""The local backend: both arms of a pair as subprocesses on this machine, in parallel.

Each arm is `python -m training.recipe` in its own process session, so a Ctrl-C in the terminal
reaches only this process, which forwards exactly one SIGTERM to each arm: each writes its checkpoint
and exits, and the same command started again resumes them. The arms' output goes to
`<arm>/train.log` (line by line, so `tail -f` follows it); their `@@ {...}` event lines become live
progress, and the last other lines are kept to show why an arm failed.

An arm's result does not depend on how it was run: every arm gets the same number of threads,
`threads_per_arm()`, a function of the machine only, recorded in the pair's manifest and reused on
resume, whether it trains beside the other arm, alone (`--arm`) or resumed after a crash. Each arm
folder is locked (training.locks) while its process lives, so two runs never write one arm.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from training.errors import BadInput
from training.experiment import locks
from training.experiment.config import ExperimentConfig
from training.experiment.events import EVENT_PREFIX, parse_event
from training.experiment.pair import DATA_SHA256_ENV, derive_pair_id

TAIL_LINES = 15  # lines of a failed arm's output shown on the console


class PairMismatch(BadInput):
    """An existing pair folder was made from another config or other data."""


@dataclass
class ArmState:
    arm: str
    folder: Path
    status: str = "pending"  # pending | running | finished | skipped | failed | interrupted
    returncode: int | None = None
    step: int = 0
    max_steps: int | None = None
    last: dict = field(default_factory=dict)  # latest train_loss, eval_loss, tokens_per_second
    metrics: dict | None = None
    started: float | None = None  # time.monotonic() at launch
    seconds: float | None = None  # wall time of this launch, once it exited
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))  # last non-event lines
    how: str | None = None  # how it ended when not finished, e.g. "killed by SIGKILL"


def threads_per_arm() -> int:
    """CPU threads each arm gets: half the CPUs this process may use, whatever the number of arms
    still to run (a thread count changes floating-point reduction order, hence the weights)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, cpus // 2)


def arm_finished(folder: Path) -> bool:
    """metrics.json is written last, after model/ is complete: both present means finished."""
    model = folder / "model"
    return (folder / "metrics.json").is_file() and (
        (model / "config.json").is_file() or (model / "adapter_config.json").is_file())


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (out of memory? see dmesg)" if -returncode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    if returncode > 128:
        try:
            return f"stopped by {signal.Signals(returncode - 128).name} (exit {returncode})"
        except ValueError:
            pass
    return f"exit {returncode}"


def pair_id_for(cfg: ExperimentConfig, data_hashes: dict[str, str]) -> str:
    """Same config and same data -> same pair id, so a re-run resumes instead of retraining."""
    return derive_pair_id(cfg.name, cfg.sha256(), sorted(data_hashes.items()))


def prepare_pair(cfg: ExperimentConfig, pair_dir: Path, pair_id: str, data_hashes: dict,
                 extra: dict | None = None) -> Path:
    """The pair's folder: the resolved config both arms read, and a small manifest (`extra`
    joins it, e.g. the pinned base model). The per-arm thread count is decided here the first
    time and kept for good (`read_manifest(pair_dir)["threads_per_arm"]`)."""
    manifest = {"pair_id": pair_id, "name": cfg.name, "base_model": cfg.base_model,
                "base_model_revision": cfg.base_model_revision,
                "config_sha256": cfg.sha256(), "data_sha256": data_hashes,
                "threads_per_arm": threads_per_arm(), **(extra or {})}
    before = check_pair(cfg, pair_dir, pair_id, data_hashes)
    if before and isinstance(before.get("threads_per_arm"), int) and before["threads_per_arm"] > 0:
        manifest["threads_per_arm"] = before["threads_per_arm"]  # resume as it started
    if before and before.get("tracking_store"):
        manifest["tracking_store"] = before["tracking_store"]  # where its runs are, for good
    pair_dir.mkdir(parents=True, exist_ok=True)
    config_path = pair_dir / "config.yaml"
    _write_atomic(config_path, cfg.to_yaml())  # an --arm run beside this one may write it too
    _write_atomic(pair_dir / "pair.json", json.dumps(manifest, indent=2) + "\n")
    return config_path


def check_pair(cfg: ExperimentConfig, pair_dir: Path, pair_id: str, data_hashes: dict) -> dict:
    """The manifest already in `pair_dir` ({} if none); PairMismatch when it is another
    experiment's (resuming its checkpoints would mix two experiments). Writes nothing."""
    existing = pair_dir / "pair.json"
    if not existing.exists():
        return {}
    try:
        before = json.loads(existing.read_text())
    except ValueError:
        raise PairMismatch(f"{existing} is not a pair manifest (not JSON): choose another "
                           "--pair-id or --output-dir") from None
    if not isinstance(before, dict) or (before.get("config_sha256"), before.get("data_sha256")) \
            != (cfg.sha256(), data_hashes):
        raise PairMismatch(f"{pair_dir} holds pair {pair_id} with a different config or "
                           "data: choose another --pair-id or --output-dir")
    return before


def read_manifest(pair_dir: Path) -> dict:
    return json.loads((pair_dir / "pair.json").read_text())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# The arm's folder, on its MLflow run (the run's description, a tag MLflow itself defines), so a
# later `train run` of the same pair elsewhere can say where it was trained (start.check_store).
NOTE_TAG, NOTE_PREFIX = "mlflow.note.content", "trained by `train run` in "


def trained_in(tags: dict) -> str | None:
    """The arm folder a run was trained in by `train run`, from its tags (None if not recorded)."""
    note = tags.get(NOTE_TAG, "")
    return note.removeprefix(NOTE_PREFIX) if note.startswith(NOTE_PREFIX) else None


def _run_context(folder: Path | None) -> str | None:
    """MLFLOW_RUN_CONTEXT for an arm: tags MLflow puts on the run the arm opens."""
    if folder is None:
        return os.environ.get("MLFLOW_RUN_CONTEXT")
    try:
        context = json.loads(os.environ.get("MLFLOW_RUN_CONTEXT") or "{}")
    except ValueError:
        context = None
    if not isinstance(context, dict):
        context = {}
    return json.dumps({**context, NOTE_TAG: f"{NOTE_PREFIX}{folder.resolve()}"})


def _arm_env(threads: int, tracking_uri: str, lock_fd: int | None = None,
             data_sha256: dict | None = None, folder: Path | None = None) -> dict:
    env = dict(os.environ)
    if context := _run_context(folder):
        env["MLFLOW_RUN_CONTEXT"] = context
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PAIRED_FINETUNE_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               MLFLOW_TRACKING_URI=tracking_uri)
    env.pop(DATA_SHA256_ENV, None)
    if data_sha256:
        env[DATA_SHA256_ENV] = json.dumps(data_sha256)
    env.pop(locks.FD_ENV, None)
    if lock_fd is not None:
        env[locks.FD_ENV] = str(lock_fd)
    return env


class LocalPair:
    """Runs the arms, follows them, and forwards a stop request."""

    def __init__(self, config_path: Path, pair_dir: Path, pair_id: str, arms: list[str],
                 tracking_uri: str, on_event=None, replicate: int = 0,
                 parent_pair_id: str | None = None, threads: int | None = None,
                 data_sha256: dict | None = None):
        self.config_path, self.pair_dir, self.pair_id = config_path, pair_dir, pair_id
        self.replicate, self.parent_pair_id = replicate, parent_pair_id or pair_id
        self.states = {a: ArmState(a, pair_dir / a) for a in arms}
        self.tracking_uri = tracking_uri
        self.on_event = on_event or (lambda state, event: None)
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopping = False
        self.stop_reason = "a stop request"
        self.threads = threads or threads_per_arm()
        self.data_sha256 = data_sha256 or {}  # role -> sha256 as validated (pair.json)
        self._lock = threading.Lock()

    def lock_arms(self) -> None:
        """Lock every arm folder of this pair (locks.Busy names a run that holds one)."""
        for state in self.states.values():
            locks.acquire(state.folder)

    @property
    def interrupted(self) -> bool:
        """Stopped by a signal before every arm finished (a late Ctrl-C does not count)."""
        return self.stopping and any(s.status not in ("finished", "skipped")
                                     for s in self.states.values())

    @property
    def failed(self) -> bool:
        return any(s.status not in ("finished", "skipped") for s in self.states.values())

    def stop(self, signum=None, *_):
        """Forward one SIGTERM to every running arm (they checkpoint and exit)."""
        with self._lock:
            if self.stopping:
                return
            self.stopping = True
            self.stop_reason = {signal.SIGINT: "Ctrl-C", signal.SIGHUP: "the terminal closed",
                                signal.SIGTERM: "SIGTERM"}.get(signum, "a stop request")
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    def run(self) -> dict[str, ArmState]:
        todo = []
        for state in self.states.values():
            done = state.folder / "metrics.json"
            if arm_finished(state.folder):
                state.status, state.metrics = "skipped", json.loads(done.read_text())
                self.on_event(state, {"event": "done", **state.metrics})
            else:
                todo.append(state)
        readers = []
        for state in todo:
            lock = locks.acquire(state.folder)  # held already by lock_arms(): the same lock
            cmd = [sys.executable, "-m", "training.recipe", "--config", str(self.config_path),
                   "--arm", state.arm, "--output-dir", str(state.folder),
                   "--pair-id", self.pair_id, "--replicate", str(self.replicate),
                   "--parent-pair-id", self.parent_pair_id]
            fds = (lock.fd,) if lock.fd is not None else ()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, bufsize=1,
                                    env=_arm_env(self.threads, self.tracking_uri, lock.fd,
                                                 {"train": self.data_sha256.get(state.arm),
                                                  "eval": self.data_sha256.get("eval")},
                                                 state.folder),
                                    start_new_session=True, pass_fds=fds,
                                    errors="backslashreplace")
            self.procs[state.arm] = proc
            state.status, state.started = "running", time.monotonic()
            reader = threading.Thread(target=self._follow, args=(state, proc), daemon=True)
            reader.start()
            readers.append(reader)
            if self.stopping:  # a stop that arrived while starting arms still reaches this one
                proc.send_signal(signal.SIGTERM)
        for reader in readers:
            reader.join()
        return self.states

    def _follow(self, state: ArmState, proc: subprocess.Popen) -> None:
        # line-buffered: `tail -f train.log` shows each line as the arm prints it
        with (state.folder / "train.log").open("a", encoding="utf-8", buffering=1,
                                               errors="backslashreplace") as logfile:
            for line in proc.stdout:
                logfile.write(line)
                if line.startswith(EVENT_PREFIX):
                    event = parse_event(line)
                    if event is not None:
                        self._apply(state, event)
                elif line.strip():
                    state.tail.append(line.rstrip("\n"))
            state.returncode = proc.wait()
            state.seconds = time.monotonic() - state.started
            metrics_file = state.folder / "metrics.json"
            if arm_finished(state.folder):  # finished, even if a late signal changed its exit
                state.status, state.metrics = "finished", json.loads(metrics_file.read_text())
            else:
                state.how = describe_exit(state.returncode)
                signalled = state.returncode < 0 or state.returncode in (130, 143)
                state.status = "interrupted" if (self.stopping or signalled) and \
                    state.returncode >= 0 else "failed"
                if state.status == "interrupted" and self.stopping:  # what the user did, in words
                    state.how = f"stopped by {self.stop_reason}"
                logfile.write(f"[train run] {state.arm} did not finish: {state.how}\n")
        if state.status != "finished" and not os.environ.get("PAIRED_FINETUNE_NO_MLFLOW"):
            from training.experiment.tracking import close_stale_run

            # an arm killed hard cannot end its MLflow run: it would stay RUNNING for ever
            close_stale_run(state.folder, self.tracking_uri,
                            "KILLED" if state.status == "interrupted" or state.returncode < 0
                            else "FAILED")
        self.on_event(state, {"event": "exit", "returncode": state.returncode})

    def _apply(self, state: ArmState, event: dict) -> None:
        state.step = event.get("step", state.step)
        state.max_steps = event.get("max_steps", state.max_steps)
        for key in ("train_loss", "eval_loss", "tokens_per_second"):
            if key in event:
                state.last[key] = event[key]
        self.on_event(state, event)
