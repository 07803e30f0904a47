"""The local backend: both arms of a pair as subprocesses on this machine, in parallel.

Each arm is `python -m training.recipe` in its own process session, so a Ctrl-C in the terminal
reaches only this process, which forwards exactly one SIGTERM to each arm: each writes its checkpoint
and exits, and the same command started again resumes them. The arms' output goes to
`<arm>/train.log`; their `@@ {...}` event lines become live progress.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from training.config import ExperimentConfig
from training.recipe import EVENT_PREFIX


class PairMismatch(Exception):
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


def pair_id_for(cfg: ExperimentConfig, data_hashes: dict[str, str]) -> str:
    """Same config and same data -> same pair id, so a re-run resumes instead of retraining."""
    h = hashlib.sha256(cfg.sha256().encode())
    for key in sorted(data_hashes):
        h.update(f"{key}={data_hashes[key]}".encode())
    return f"{cfg.name}-{h.hexdigest()[:10]}"


def prepare_pair(cfg: ExperimentConfig, pair_dir: Path, pair_id: str, data_hashes: dict) -> Path:
    """The pair's folder: the resolved config both arms read, and a small manifest."""
    manifest = {"pair_id": pair_id, "name": cfg.name, "base_model": cfg.base_model,
                "config_sha256": cfg.sha256(), "data_sha256": data_hashes}
    existing = pair_dir / "pair.json"
    if existing.exists():
        before = json.loads(existing.read_text())
        if (before.get("config_sha256"), before.get("data_sha256")) != (
                manifest["config_sha256"], data_hashes):
            # resuming checkpoints of another config or other data would mix two experiments
            raise PairMismatch(f"{pair_dir} holds pair {pair_id} with a different config or "
                               "data: choose another --pair-id or --output-dir")
    pair_dir.mkdir(parents=True, exist_ok=True)
    config_path = pair_dir / "config.yaml"
    config_path.write_text(cfg.to_yaml())
    (pair_dir / "pair.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return config_path


def _arm_env(threads: int, tracking_uri: str) -> dict:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false", MLFLOW_TRACKING_URI=tracking_uri)
    return env


class LocalPair:
    """Runs the arms, follows them, and forwards a stop request."""

    def __init__(self, config_path: Path, pair_dir: Path, pair_id: str, arms: list[str],
                 tracking_uri: str, on_event=None, replicate: int = 0,
                 parent_pair_id: str | None = None):
        self.config_path, self.pair_dir, self.pair_id = config_path, pair_dir, pair_id
        self.replicate, self.parent_pair_id = replicate, parent_pair_id or pair_id
        self.states = {a: ArmState(a, pair_dir / a) for a in arms}
        self.tracking_uri = tracking_uri
        self.on_event = on_event or (lambda state, event: None)
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopping = False
        self._lock = threading.Lock()

    def stop(self, *_):
        """Forward one SIGTERM to every running arm (they checkpoint and exit)."""
        with self._lock:
            if self.stopping:
                return
            self.stopping = True
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    def run(self) -> dict[str, ArmState]:
        todo = []
        for state in self.states.values():
            done = state.folder / "metrics.json"
            if done.exists():
                state.status, state.metrics = "skipped", json.loads(done.read_text())
                self.on_event(state, {"event": "done", **state.metrics})
            else:
                todo.append(state)
        threads = max(1, (os.cpu_count() or 1) // max(1, len(todo)))
        readers = []
        for state in todo:
            state.folder.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "training.recipe", "--config", str(self.config_path),
                   "--arm", state.arm, "--output-dir", str(state.folder),
                   "--pair-id", self.pair_id, "--replicate", str(self.replicate),
                   "--parent-pair-id", self.parent_pair_id]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, bufsize=1,
                                    env=_arm_env(threads, self.tracking_uri),
                                    start_new_session=True)
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
        with (state.folder / "train.log").open("a", encoding="utf-8") as logfile:
            for line in proc.stdout:
                logfile.write(line)
                if line.startswith(EVENT_PREFIX):
                    try:
                        event = json.loads(line[len(EVENT_PREFIX):])
                    except json.JSONDecodeError:
                        continue
                    self._apply(state, event)
        state.returncode = proc.wait()
        state.seconds = time.monotonic() - state.started
        metrics_file = state.folder / "metrics.json"
        if state.returncode == 0 and metrics_file.exists():
            state.status, state.metrics = "finished", json.loads(metrics_file.read_text())
        elif self.stopping or state.returncode in (130, 143):
            state.status = "interrupted"
        else:
            state.status = "failed"
        self.on_event(state, {"event": "exit", "returncode": state.returncode})

    def _apply(self, state: ArmState, event: dict) -> None:
        state.step = event.get("step", state.step)
        state.max_steps = event.get("max_steps", state.max_steps)
        for key in ("train_loss", "eval_loss", "tokens_per_second"):
            if key in event:
                state.last[key] = event[key]
        self.on_event(state, event)
