"""Issue 25, items 3 and 5 as a user meets them: every setting checked before any arm starts, and
one pair in one place (a pair id that is another pair's replicate, a pair trained elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.training.local.test_run_hostile import edit, first_line, run_cli
from tests.training.pairs import write_experiment
from training.errors import BadInput


# ----------------------------------------------------------------------------- item 3
@pytest.mark.parametrize("command", ["run", "validate", "submit"])
def test_a_non_ascii_hub_id_is_exit_2_naming_the_line(tmp_path, command, outputs_file):
    cfg = edit(write_experiment(tmp_path), base_model="méta/llama-ü")
    args = {"run": ("run", "--config", cfg, "--output-dir", tmp_path / "runs"),
            "validate": ("data", "validate", "--config", cfg),
            "submit": ("submit", "--config", cfg, "--outputs-file", outputs_file, "--dry-run")}
    code, output = run_cli(*args[command])
    assert code == 2, output
    assert "Traceback" not in output and "HFValidationError" not in output
    assert first_line(output).startswith(f"error: {cfg}:2: base_model: 'méta/llama-ü' is "
                                         "neither a folder"), output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("training", "warned"), [
    ({"max_steps": 1, "warmup": 0.03}, True),   # one step: ceil(0.03) = 1 warmup step, lr 0
    ({"max_steps": None, "epochs": 0.001}, True),  # the one-step run
    ({"max_steps": 5, "warmup": 5}, True),       # warmup in steps, as many as the run
    ({"max_steps": 20, "warmup": 0.1}, False),   # 2 of 20 steps
    ({"max_steps": 1, "warmup": 0.0}, False),    # no warmup at all
    ({"max_steps": 1, "lr_scheduler": "constant"}, False),  # `constant` has no warmup
])
def test_a_warmup_as_long_as_the_run_is_a_warning_before_training(tmp_path, tiny_model_path,
                                                                  training, warned):
    data = yaml.safe_load(write_experiment(tmp_path).read_text())
    data["training"].update(training)
    data["training"] = {k: v for k, v in data["training"].items() if v is not None}
    cfg = tmp_path / "experiment.yaml"
    cfg.write_text(yaml.safe_dump(data))
    code, output = run_cli("data", "validate", "--config", cfg)
    assert code == 0, output
    assert ("warning: training.warmup" in output) is warned, output
    if warned:
        assert "covers the whole run" in output
        assert "never reaches training.learning_rate" in output


def test_warmup_warning_counts_steps_as_the_trainer_does():
    from training.experiment.config import parse_config
    from training.plan.preflight import optimizer_steps, warmup_warnings

    cfg = parse_config({"name": "w", "base_model": "tiny-llama",
                        "training": {"epochs": 1, "per_device_batch_size": 4,
                                     "gradient_accumulation_steps": 2, "warmup": 3},
                        "arms": {"control": {"train": "c"}, "experiment": {"train": "e"}}})
    # no shared eval set: 10% held out; 40 rows -> 36 -> 9 batches -> 4 steps (9 // 2)
    assert optimizer_steps(cfg, 36) == 4
    assert warmup_warnings(cfg, {"control": 40, "experiment": 400}) == []
    [warning] = warmup_warnings(cfg, {"control": 30, "experiment": 400})  # 27 rows: 3 steps
    assert "control 3 step(s)" in warning and "experiment" not in warning


# ----------------------------------------------------------------------------- item 5
def fake_pair_folder(output_dir: Path, pair_id: str, replicates: int = 1) -> Path:
    """A pair folder as `train run` leaves it (pair.json, rK/ per replicate), without training."""
    folder = output_dir / pair_id
    folder.mkdir(parents=True)
    (folder / "pair.json").write_text(json.dumps({"pair_id": pair_id}))
    if replicates > 1:
        for k in range(replicates):
            (folder / f"r{k}" / "control").mkdir(parents=True)
    return folder


def test_a_pair_id_that_is_another_pairs_replicate_is_refused(tmp_path, tiny_model_path):
    runs = tmp_path / "runs"
    fake_pair_folder(runs, "collide", replicates=2)
    cfg = write_experiment(tmp_path)
    code, output = run_cli("run", "--config", cfg, "--output-dir", runs, "--pair-id",
                           "collide-r0", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    assert code == 2, output
    assert first_line(output).startswith(
        "error: pair collide-r0: 'collide-r0' is already the name of replicate 'collide-r0' of "
        "pair 'collide'"), output
    assert not (runs / "collide-r0").exists()  # nothing written


def test_a_replicated_pair_whose_replicate_is_another_pair_is_refused(tmp_path, tiny_model_path):
    runs = tmp_path / "runs"
    fake_pair_folder(runs, "collide-r1")
    cfg = edit(write_experiment(tmp_path), training__replicates=2)
    code, output = run_cli("run", "--config", cfg, "--output-dir", runs, "--pair-id", "collide",
                           "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    assert code == 2, output
    assert "'collide-r1' is already the name of pair 'collide-r1'" in first_line(output)
    assert not (runs / "collide").exists()


def log_arm_run(uri: str, pair_id: str, arm: str, parent: str | None = None,
                folder: Path | None = None, status: str = "FINISHED") -> str:
    """A run as an arm logs it (the tags `train compare` finds a pair by)."""
    from training.local.backend import NOTE_PREFIX, NOTE_TAG

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("x") or client.get_experiment(client.create_experiment("x"))
    tags = {"pair_id": pair_id, "arm": arm, "parent_pair_id": parent or pair_id}
    if folder is not None:
        tags[NOTE_TAG] = f"{NOTE_PREFIX}{folder}"
    run = client.create_run(exp.experiment_id, tags=tags)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_a_pair_id_that_is_a_replicate_in_the_store_is_refused(tmp_path, tiny_model_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    for arm in ("control", "experiment"):
        log_arm_run(uri, "collide-r0", arm, parent="collide")  # trained in another folder
    code, output = run_cli("run", "--config", write_experiment(tmp_path), "--output-dir",
                           tmp_path / "runs", "--pair-id", "collide-r0", "--tracking-uri", uri)
    assert code == 2, output
    assert "is already the name of replicate 'collide-r0' of pair 'collide' in the MLflow store" \
        in first_line(output), output
    assert not (tmp_path / "runs").exists()


def test_the_same_pair_trained_in_another_folder_is_refused_saying_where(tmp_path,
                                                                         tiny_model_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    elsewhere = tmp_path / "elsewhere" / "same" / "control"
    log_arm_run(uri, "same", "control", folder=elsewhere)
    log_arm_run(uri, "same", "experiment", folder=elsewhere.parent / "experiment")
    code, output = run_cli("run", "--config", write_experiment(tmp_path), "--output-dir",
                           tmp_path / "runs", "--pair-id", "same", "--tracking-uri", uri)
    assert code == 2, output
    assert first_line(output).startswith("error: pair same was already trained"), output
    assert str(elsewhere) in output and "pass a new --pair-id" in output
    assert not (tmp_path / "runs").exists()


def test_the_store_check_lets_a_pair_resume_in_its_own_folder(tmp_path):
    from training.local.start import check_store

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    ours = [tmp_path / "runs" / "p" / arm for arm in ("control", "experiment")]
    for folder in ours:
        folder.mkdir(parents=True)
        run_id = log_arm_run(uri, "p", folder.name, folder=folder)
        (folder / "mlflow_run_id").write_text(run_id)
    log_arm_run(uri, "p", "control", folder=tmp_path / "other" / "p" / "control",
                status="FAILED")  # not finished: nothing to say
    log_arm_run(uri, "p-other", "control")  # another pair that merely starts the same way
    check_store(uri, "p", 1, ours)
    # the folder was emptied and the pair is trained again in the same place: its own runs
    for folder in ours:
        (folder / "mlflow_run_id").unlink()
    check_store(uri, "p", 1, ours)
    # finished elsewhere, with no folder recorded (Azure ML, another machine)
    log_arm_run(uri, "p", "experiment")
    with pytest.raises(BadInput, match="no local folder recorded"):
        check_store(uri, "p", 1, ours)


def test_each_arm_run_records_its_folder(tmp_path, monkeypatch):
    """The arm's environment makes MLflow note its folder on the run it opens."""
    from training.local.backend import _arm_env, trained_in

    monkeypatch.setenv("MLFLOW_RUN_CONTEXT", json.dumps({"team": "a"}))
    env = _arm_env(1, f"sqlite:///{tmp_path / 'm.db'}", folder=tmp_path / "p" / "control")
    monkeypatch.setenv("MLFLOW_RUN_CONTEXT", env["MLFLOW_RUN_CONTEXT"])
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        experiment = mlflow.MlflowClient().create_experiment("x")
        with mlflow.start_run(experiment_id=experiment) as run:  # as the recipe opens it
            pass
        tags = mlflow.MlflowClient().get_run(run.info.run_id).data.tags
    finally:
        mlflow.set_tracking_uri(previous)
    assert trained_in(tags) == str((tmp_path / "p" / "control").resolve())
    assert tags["team"] == "a"  # the user's own run context is kept


@pytest.mark.slow
def test_a_pair_trained_in_one_output_dir_is_refused_in_another(tmp_path, tracking_env):
    """End to end: the arms' runs note their folders, and a second `train run` of the same pair
    into another --output-dir is refused naming them (it trained again silently, and the store
    got two runs per arm)."""
    import subprocess
    import sys

    from tests.training.pairs import REPO

    cfg = write_experiment(tmp_path, max_steps=2, eval_every=2, save_every=2)

    def train_run(out):
        return subprocess.run([sys.executable, "-m", "training.cli", "run", "--config", str(cfg),
                               "--output-dir", str(out)], capture_output=True, text=True,
                              env=tracking_env, cwd=REPO, timeout=120)

    first = train_run(tmp_path / "a")
    assert first.returncode == 0, first.stderr
    [pair_dir] = (tmp_path / "a").iterdir()
    second = train_run(tmp_path / "b")
    assert second.returncode == 2, second.stderr
    assert f"error: pair {pair_dir.name} was already trained" in second.stderr
    assert str((pair_dir / "control").resolve()) in second.stderr
    assert "Traceback" not in second.stderr and not (tmp_path / "b").exists()
    runs = mlflow.MlflowClient(tracking_env["MLFLOW_TRACKING_URI"]).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(
            tracking_env["MLFLOW_TRACKING_URI"]).search_experiments()])
    assert sorted(r.data.tags["arm"] for r in runs) == ["control", "experiment"]
