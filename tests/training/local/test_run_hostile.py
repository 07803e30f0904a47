"""`train run` and `train data validate --config` as a hostile user tries them.

Every bad input is exit 2 with the reason on the console, before any arm starts (no pair folder is
made); the fast cases run the CLI in this process, the ones that train run it as a user does."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.training.pairs import DATA, REPO, recipe_cmd, write_experiment
from training.cli import main


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def first_line(output: str) -> str:
    """The first line after `preparing ...` (printed first when stderr is not a terminal)."""
    return next(line for line in output.splitlines()
                if line.strip() and not line.startswith("preparing "))


def edit(cfg: Path, **changes) -> Path:
    """The experiment file with `section.field` (or top-level) values replaced."""
    data = yaml.safe_load(cfg.read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[key] = value
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg


def assert_refused(tmp_path, code, output, first):
    assert code == 2, output
    assert first_line(output).startswith(first), output
    assert "Traceback" not in output
    assert not (tmp_path / "runs").exists()  # nothing made, nothing trained


# ----------------------------------------------------------------------------- exit 2, fast
@pytest.mark.parametrize(
    ("changes", "first", "detail"),
    [
        ({"training__precision": "fp16"}, "error: the experiment cannot run here",
         "training.precision: fp16 needs a CUDA GPU"),
        ({"method": "lora", "lora": {"target_modules": ["q_proj", "attn_q"]}},
         "error: the experiment cannot run here",
         "lora.target_modules: 'attn_q' is not a module of tiny-llama"),
        ({"method": "lora", "lora": {"target_modules": ["layers"]}},
         "error: the experiment cannot run here", "'layers' names a ModuleList"),
        ({"method": "qlora"}, "error: the experiment cannot run here",
         "method: qlora needs a CUDA GPU"),
        # accelerate runs FSDP on GPUs only: both arms crashed with a transformers traceback
        ({"training__sharding": "fsdp"}, "error: the experiment cannot run here",
         "training.sharding: fsdp needs CUDA GPUs"),
        # it offloads FSDP's shards: with no FSDP it did nothing but change the pair id
        ({"training__cpu_offload": True}, "error: the experiment cannot run here",
         "training.cpu_offload: true offloads FSDP's shards"),
    ],
)
@pytest.mark.parametrize("command", ["run", "validate"])
def test_settings_that_fail_inside_an_arm_are_caught_before(tmp_path, tiny_model_path, changes,
                                                            first, detail, command):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks what a CPU-only machine refuses")
    cfg = edit(write_experiment(tmp_path), **changes)
    if command == "run":
        code, output = run_cli("run", "--config", cfg, "--output-dir", tmp_path / "runs")
    else:
        code, output = run_cli("data", "validate", "--config", cfg)
    assert_refused(tmp_path, code, output, first)
    assert detail in output


def test_bad_files_and_names(tmp_path, tiny_model_path):
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    cases = [
        (write_experiment(tmp_path / "a", control=fifo), (),
         "error: data files cannot be read:", f"control: {fifo}: a FIFO (named pipe)"),
        (write_experiment(tmp_path / "b", experiment=loop), (),
         "error: data files cannot be read:", f"experiment: {loop}: a symlink loop"),
        (write_experiment(tmp_path / "c", eval_file=tmp_path), (),
         "error: data files cannot be read:", f"eval: {tmp_path}: a directory, not a file"),
        (write_experiment(tmp_path / "d"), ("--pair-id", "../escape"),
         "error: --pair-id '../escape' is not a pair id: lower-case letters", "the pair folder"),
        (write_experiment(tmp_path / "e"), ("--pair-id", "a/b"), "error: --pair-id 'a/b'", ""),
        (edit(write_experiment(tmp_path / "f"), base_model="./models/mine"), (),
         f"error: {tmp_path / 'f' / 'experiment.yaml'}:2: base_model: no such folder: "
         f"{tmp_path / 'f' / 'models' / 'mine'}", ""),
    ]
    for cfg, extra, first, detail in cases:
        code, output = run_cli("run", "--config", cfg, "--output-dir", tmp_path / "runs", *extra)
        assert_refused(tmp_path, code, output, first)
        assert detail in output
    a_file = tmp_path / "file"
    a_file.write_text("")
    code, output = run_cli("run", "--config", cases[3][0], "--output-dir", a_file)
    assert code == 2 and first_line(output) == f"error: --output-dir {a_file}: not a directory"


def test_bad_experiment_files(tmp_path):
    cfg = write_experiment(tmp_path)
    text = cfg.read_text()
    cases = {
        "dup.yaml": (text + "name: again\n", "key 'name' given twice (first on line 1)"),
        "bool.yaml": (text.replace("max_steps: 20", "max_steps: true"),
                      "training.max_steps: Input should be a valid integer, got true"),
        "float.yaml": (text.replace("max_steps: 20", "max_steps: 20.5"),
                       "training.max_steps: Input should be a valid integer, got 20.5"),
    }
    for name, (content, detail) in cases.items():
        (tmp_path / name).write_text(content)
        code, output = run_cli("run", "--config", tmp_path / name)
        assert code == 2 and output.startswith(f"error: {tmp_path / name}"), output
        assert detail in output
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(text.encode().replace(b"test-pair", b"caf\xe9"))
    code, output = run_cli("run", "--config", latin)
    assert code == 2
    assert first_line(output) == (f"error: {latin}:1: not UTF-8 text (byte 0xe9): save the "
                                  "experiment file as UTF-8")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    code, output = run_cli("data", "validate", "--config", fifo)
    assert code == 2
    assert first_line(output) == (f"error: {fifo}: cannot read experiment file: a FIFO (named "
                                  "pipe), not a regular file")


def test_bad_rows_name_the_line(tmp_path, tiny_model_path):
    surrogate = tmp_path / "s.jsonl"
    good = (DATA / "control.jsonl").read_text().splitlines()[:3]
    surrogate.write_text("\n".join([*good, good[0].replace('"content": "', '"content": "\\ud83d ',
                                                            1)]) + "\n")
    array = tmp_path / "array.jsonl"
    array.write_text("[" + ",\n".join(good) + "]\n")
    for bad, message in ((surrogate, f"{surrogate}:4: lone surrogate \\ud83d in message 1 "),
                         (array, f"{array}: a JSON array, not JSONL")):
        cfg = write_experiment(tmp_path / bad.stem, experiment=bad)
        code, output = run_cli("run", "--config", cfg, "--output-dir", tmp_path / "runs")
        assert code == 2 and "Traceback" not in output
        assert message in output
        assert "error: the data is not valid: nothing was trained" in output
        assert not (tmp_path / "runs").exists()


def test_same_data_is_a_warning(tmp_path, tiny_model_path):
    cfg = write_experiment(tmp_path, experiment=DATA / "control.jsonl",
                           eval_file=DATA / "control.jsonl")
    code, output = run_cli("data", "validate", "--config", cfg)
    assert code == 0, output
    control = DATA / "control.jsonl"
    assert (f"warning: control and experiment are the same file ({control}): the pair compares "
            "nothing") in output
    assert f"warning: control and eval are the same file ({control})" in output
    assert "base model: tiny-llama @ sha256:" in output


def test_a_second_run_of_an_arm_is_refused_naming_the_running_one(tmp_path, tiny_model_path):
    from tests.training.experiment.test_locks import hold_in_child

    cfg = write_experiment(tmp_path)
    holder = hold_in_child(tmp_path / "runs" / "p" / "experiment")  # an arm being trained
    try:
        code, output = run_cli("run", "--config", cfg, "--output-dir", tmp_path / "runs",
                               "--pair-id", "p", "--tracking-uri",
                               f"sqlite:///{tmp_path / 'mlflow.db'}")  # not a leaked global
    finally:
        holder.kill()
        holder.wait()
    assert code == 2, output
    error = next(line for line in output.splitlines() if line.startswith("error:"))
    assert error.startswith(
        f"error: {tmp_path / 'runs' / 'p' / 'experiment'} is being trained by pid {holder.pid} on ")
    assert "wait for it to end" in output
    assert not (tmp_path / "runs" / "p" / "pair.json").exists()  # nothing written
    assert not (tmp_path / "runs" / "p" / "control" / "train.log").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_hub_fails_in_seconds_with_one_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    cfg = edit(write_experiment(tmp_path), base_model="org/some-model")
    started = time.monotonic()
    code, output = run_cli("run", "--config", cfg, "--output-dir", tmp_path / "runs")
    assert time.monotonic() - started < 10
    assert_refused(tmp_path, code, output, "error: base_model org/some-model: cannot reach the "
                                           "Hugging Face hub (ConnectError")
    assert "to work offline, download it once" in output and "HF_HUB_OFFLINE=1" in output
    assert len([line for line in output.splitlines() if line.startswith("error")]) == 1


# ----------------------------------------------------------------------------- as a user runs it
class Console:
    """The stderr of a `train run` in a subprocess, line by line, with a deadline."""

    def __init__(self, proc):
        self.proc, self.lines, self.queue = proc, [], queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            self.queue.put(line)
        self.queue.put(None)

    def wait_for(self, predicate, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError("train run ended first:\n" + "".join(self.lines[-40:]))
            self.lines.append(line)
            if predicate(line):
                return line
        raise AssertionError("timed out:\n" + "".join(self.lines[-40:]))

    def rest(self, timeout=300) -> str:
        code = self.proc.wait(timeout=timeout)
        while (line := self.queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return code, "".join(self.lines)


def start(cfg, out, env, *extra):
    cmd = [sys.executable, "-m", "training.cli", "run", "--config", str(cfg),
           "--output-dir", str(out), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)
    return Console(proc)


def step_of(line: str, arm: str) -> int:
    words = line.split()
    if len(words) > 2 and words[0] == arm and words[1] == "step":
        return int(words[2].split("/")[0])
    return -1


@pytest.mark.slow
def test_ctrl_c_while_preparing_exits_130_and_starts_nothing(tmp_path, tracking_env,
                                                             tiny_model_path):
    cfg = write_experiment(tmp_path)
    console = start(cfg, tmp_path / "runs", tracking_env)
    console.wait_for(lambda line: line.startswith("preparing tiny-llama"))
    console.proc.send_signal(signal.SIGINT)
    code, output = console.rest()
    assert code == 130, output
    assert "interrupted while preparing the pair: nothing was trained" in output
    assert "Traceback" not in output
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_an_arm_gives_the_same_weights_in_the_pair_and_alone_and_a_late_ctrl_c_changes_nothing(
        tmp_path, tracking_env, tiny_model_path):
    from safetensors.torch import load_file

    from training.local.backend import threads_per_arm

    cfg = write_experiment(tmp_path, max_steps=4, eval_every=2, save_every=2)
    env = {**tracking_env, "PAIRED_FINETUNE_NO_MLFLOW": "1"}  # weights only: no tracking
    env.pop("OMP_NUM_THREADS", None)  # as a user runs it: the machine decides
    console = start(cfg, tmp_path / "pair", env, "--pair-id", "p")
    done = set()

    def both_done(line):
        if "done" in line.split()[2:4]:
            done.add(line.split()[0])
        return done == {"control", "experiment"}

    console.wait_for(both_done)
    console.proc.send_signal(signal.SIGINT)  # just after both arms finished
    code, output = console.rest()
    assert code == 0, output
    assert "interrupted" not in output
    for arm in ("control", "experiment"):
        assert f"│ {arm:<10} │ finished │" in output

    alone = subprocess.run([sys.executable, "-m", "training.cli", "run", "--config", str(cfg),
                            "--output-dir", str(tmp_path / "alone"), "--pair-id", "p", "--arm",
                            "control"], capture_output=True, text=True, env=env, cwd=REPO,
                           timeout=400)
    assert alone.returncode == 0, alone.stderr[-3000:]
    manifests = [json.loads((tmp_path / d / "p" / "pair.json").read_text())
                 for d in ("pair", "alone")]
    assert manifests[0]["threads_per_arm"] == manifests[1]["threads_per_arm"] == threads_per_arm()
    paired = load_file(tmp_path / "pair" / "p" / "control" / "model" / "model.safetensors")
    single = load_file(tmp_path / "alone" / "p" / "control" / "model" / "model.safetensors")
    assert paired.keys() == single.keys()
    for name, tensor in paired.items():
        assert tensor.equal(single[name]), f"{name} differs between the pair and the arm alone"


@pytest.mark.slow
def test_an_arm_killed_hard_is_reported_its_run_closed_and_resumed_without_double_steps(
        tmp_path, tracking_env, tiny_model_path):
    import mlflow
    import psutil

    cfg = write_experiment(tmp_path, max_steps=20, eval_every=20, save_every=4)
    out = tmp_path / "runs"
    console = start(cfg, out, tracking_env, "--pair-id", "k", "--arm", "control")
    console.wait_for(lambda line: step_of(line, "control") >= 6)
    log = out / "k" / "control" / "train.log"
    # written as the arm runs (tail -f works): the line the console just showed is in the log
    assert '"event": "log", "step": 6,' in log.read_text()

    arm = next(p for p in psutil.Process(console.proc.pid).children(recursive=True)
               if "training.recipe" in p.cmdline())
    arm.send_signal(signal.SIGKILL)
    code, output = console.rest()
    assert code == 1, output
    assert "control: failed (killed by SIGKILL" in output
    assert "last lines of control's output:" in output
    assert log.read_text().splitlines()[-1] == (
        "[train run] control did not finish: killed by SIGKILL (out of memory? see dmesg)")
    client = mlflow.MlflowClient(tracking_env["MLFLOW_TRACKING_URI"])
    run_id = (out / "k" / "control" / "mlflow_run_id").read_text().strip()
    assert client.get_run(run_id).info.status == "KILLED"  # not RUNNING for ever

    # resumed (the arm's own process: what `train run` starts again, without its checks)
    again = subprocess.run(recipe_cmd(out / "k" / "config.yaml", out / "k" / "control", "control",
                                      "k"), capture_output=True, text=True, env=tracking_env,
                           cwd=REPO, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == list(range(2, 21, 2))  # each logged step once, none twice


def test_a_tracking_store_that_cannot_be_used(tmp_path, tiny_model_path):
    cfg = write_experiment(tmp_path)
    (tmp_path / "a-file").write_text("")
    code, output = run_cli("run", "--config", cfg, "--output-dir", tmp_path / "runs",
                           "--tracking-uri", f"sqlite:///{tmp_path}/a-file/mlflow.db")
    assert code == 2 and "Traceback" not in output, output
    assert first_line(output).startswith("error: MLflow tracking URI sqlite:///")
    assert not (tmp_path / "runs").exists()
