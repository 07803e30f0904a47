"""`train run`: the whole pair on this machine, as a user runs it (the CLI in a subprocess)."""

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.training.pairs import REPO, write_experiment
from training.experiment.config import load_config
from training.local.backend import pair_id_for

pytestmark = pytest.mark.slow


def train_run(cfg, out, env, *extra, check=True):
    cmd = [sys.executable, "-m", "training.cli", "run", "--config", str(cfg),
           "--output-dir", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=400)
    if check and proc.returncode != 0:
        raise AssertionError(f"train run exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def runs_of(env, pair_id):
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("test-pair")
    return client.search_runs([exp.experiment_id], f"tags.pair_id = '{pair_id}'")


def test_pair_trains_both_arms_tracks_them_and_is_not_retrained(tiny_model_path, tmp_path,
                                                                 tracking_env):
    cfg = write_experiment(tmp_path, max_steps=12, eval_every=6, save_every=6)
    out = tmp_path / "runs"
    # One arm first (--arm), then the pair: the finished arm is not trained again.
    train_run(cfg, out, tracking_env, "--arm", "control")
    pairs = list(out.iterdir())
    assert len(pairs) == 1
    pair_dir = pairs[0]
    assert (pair_dir / "control" / "metrics.json").exists()
    assert not (pair_dir / "experiment").exists()
    control_done = (pair_dir / "control" / "metrics.json").stat().st_mtime_ns

    proc = train_run(cfg, out, tracking_env)
    assert (pair_dir / "control" / "metrics.json").stat().st_mtime_ns == control_done
    pair_id = pair_dir.name
    manifest = json.loads((pair_dir / "pair.json").read_text())
    revision = manifest["base_model_revision"]  # pinned before the arms started: in the pair id
    assert revision.startswith("sha256:")
    pinned = load_config(cfg).model_copy(update={"base_model_revision": revision})
    assert pair_id == pair_id_for(pinned, manifest["data_sha256"])
    for arm in ("control", "experiment"):
        metrics = json.loads((pair_dir / arm / "metrics.json").read_text())
        assert {"train_loss", "eval_loss", "perplexity", "tokens_per_second",
                "global_step"} <= metrics.keys()
        assert metrics["global_step"] == 12
        assert metrics["tokens_per_second"] > 0
        assert (pair_dir / arm / "model" / "model.safetensors").exists()
        # retention: keep_checkpoints=2 of the checkpoints at steps 6 and 12
        assert len(list((pair_dir / arm / "checkpoints").glob("checkpoint-*"))) <= 2
    assert re.search(r"experiment\W+finished", proc.stderr)
    assert re.search(r"control\W+skipped", proc.stderr)

    # Two MLflow runs, one per arm, tagged with the pair, with params, metrics and artifacts.
    runs = runs_of(tracking_env, pair_id)
    assert sorted(r.data.tags["arm"] for r in runs) == ["control", "experiment"]
    import mlflow

    client = mlflow.MlflowClient(tracking_env["MLFLOW_TRACKING_URI"])
    by_arm = {r.data.tags["arm"]: r for r in runs}
    for arm, run in by_arm.items():
        params = run.data.params
        data_sha = manifest["data_sha256"][arm]
        assert params["data.train_sha256"] == data_sha
        assert params["data.train_rows"] == "320"
        assert params["data.eval_sha256"] == manifest["data_sha256"]["eval"]
        assert params["config_sha256"] == manifest["config_sha256"]
        assert params["training.learning_rate"] == "0.002"
        assert params["base_model_revision"] == run.data.tags["base_model_revision"] == revision
        assert params["code_version"]
        metrics = run.data.metrics
        for key in ("train_loss", "eval_loss", "perplexity", "learning_rate", "tokens_per_second"):
            assert key in metrics, f"{arm} run lacks {key}"
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 6
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "metrics.json"} <= artifacts
        assert any(k.startswith("system/") for k in metrics), "no system metrics"
    # Both arms: identical hyperparameters, different data.
    ignore = {"arm", "data.train_sha256"}
    pa, pb = (by_arm[a].data.params for a in ("control", "experiment"))
    assert {k: v for k, v in pa.items() if k not in ignore} == \
           {k: v for k, v in pb.items() if k not in ignore}
    assert pa["data.train_sha256"] != pb["data.train_sha256"]

    # The same command again: nothing retrained, nothing new in MLflow.
    stamp = (pair_dir / "control" / "metrics.json").stat().st_mtime_ns
    started = time.monotonic()
    again = train_run(cfg, out, tracking_env)
    assert "skipped" in again.stderr
    assert (pair_dir / "control" / "metrics.json").stat().st_mtime_ns == stamp
    assert len(runs_of(tracking_env, pair_id)) == 2
    assert time.monotonic() - started < 60
    # the same pair with another store: its runs are not there, refused naming where they are
    other = {**tracking_env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'other.db'}"}
    elsewhere = train_run(cfg, out, other, check=False)
    assert elsewhere.returncode == 2, elsewhere.stderr[-2000:]
    assert f"logs its runs to {tracking_env['MLFLOW_TRACKING_URI']}" in elsewhere.stderr


def test_sigterm_to_train_run_checkpoints_both_arms_and_the_same_command_resumes(
        tiny_model_path, tmp_path, tracking_env):
    cfg = write_experiment(tmp_path, max_steps=40, eval_every=10, save_every=10)
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "training.cli", "run", "--config", str(cfg),
           "--output-dir", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=tracking_env, cwd=REPO)
    progressed = set()
    for line in proc.stderr:
        words = line.split()
        if len(words) > 2 and words[1] == "step" and int(words[2].split("/")[0]) >= 6:
            progressed.add(words[0])
        if progressed == {"control", "experiment"}:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    assert "interrupted (stopped by SIGTERM)" in rest  # what was done, not the arms' exit code
    pair_dir = next(out.iterdir())
    for arm in ("control", "experiment"):
        assert not (pair_dir / arm / "metrics.json").exists()
        assert list((pair_dir / arm / "checkpoints").glob("checkpoint-*/COMPLETE"))

    train_run(cfg, out, tracking_env)
    for arm in ("control", "experiment"):
        log = (pair_dir / arm / "train.log").read_text()
        assert "resuming from" in log
        assert json.loads((pair_dir / arm / "metrics.json").read_text())["global_step"] == 40
    assert len(runs_of(tracking_env, pair_dir.name)) == 2  # resumed arms kept their runs


def test_bad_config_exits_2_before_anything(tmp_path, tracking_env):
    cfg = write_experiment(tmp_path, method="prefix-tuning")
    proc = train_run(cfg, tmp_path / "runs", tracking_env, check=False)
    assert proc.returncode == 2
    assert "method" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_bad_data_exits_2_and_nothing_is_trained(tmp_path, tracking_env, tiny_model_path):
    bad = tmp_path / "experiment.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"text": ""}\n')
    cfg = write_experiment(tmp_path, experiment=bad)
    proc = train_run(cfg, tmp_path / "runs", tracking_env, check=False)
    assert proc.returncode == 2
    assert f"{bad}:1:" in proc.stderr and f"{bad}:2:" in proc.stderr
    assert "nothing was trained" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_pair_id_cannot_be_reused_for_another_config(tmp_path, tracking_env, tiny_model_path):
    first = write_experiment(tmp_path / "a", max_steps=12)
    second = write_experiment(tmp_path / "b", max_steps=14)
    pair_dir = tmp_path / "runs" / "mine"
    pair_dir.mkdir(parents=True)
    from training.local.backend import prepare_pair

    prepare_pair(load_config(first), pair_dir, "mine", {"control": "x"})
    proc = train_run(second, tmp_path / "runs", tracking_env, "--pair-id", "mine", check=False)
    assert proc.returncode == 2
    assert "different config or data" in proc.stderr
    assert not (pair_dir / "control").exists()


def test_one_arm_failing_keeps_the_other_and_exits_1(tmp_path, tracking_env, tiny_model_path):
    cfg = write_experiment(tmp_path, max_steps=6, eval_every=3, save_every=3)
    out = tmp_path / "runs"
    # The experiment arm cannot write its checkpoints: a file stands where its folder should be.
    (out / "p1" / "experiment").mkdir(parents=True)
    (out / "p1" / "experiment" / "checkpoints").write_text("not a folder")
    proc = train_run(cfg, out, tracking_env, "--pair-id", "p1", check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert json.loads((out / "p1" / "control" / "metrics.json").read_text())["global_step"] == 6
    assert not (out / "p1" / "experiment" / "metrics.json").exists()
    assert re.search(r"experiment\W+failed", proc.stderr)
    assert f"experiment: failed (exit 1), see {out / 'p1' / 'experiment' / 'train.log'}" \
        in proc.stderr
    # the cause, from the end of the arm's output, is on the console
    assert re.search(r"experiment \| .*(NotADirectoryError|FileExistsError|Not a directory)",
                     proc.stderr), proc.stderr[-3000:]


def test_missing_data_is_reported_before_the_model_is_fetched(tmp_path, tracking_env):
    cfg = write_experiment(tmp_path, control=tmp_path / "nope.jsonl")
    text = cfg.read_text().replace("base_model: tiny-llama", "base_model: org/not-on-this-machine")
    cfg.write_text(text)
    proc = train_run(cfg, tmp_path / "runs", tracking_env, check=False)
    assert proc.returncode == 2
    assert f"control: {tmp_path / 'nope.jsonl'}" in proc.stderr
    assert "tokenizer" not in proc.stderr
