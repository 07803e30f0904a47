"""MLflow tracking of an arm against a local sqlite store."""

import pytest

from training.experiment import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    return uri


def test_a_resumed_run_does_not_log_the_same_step_twice(store, tmp_path):
    import mlflow

    arm = tmp_path / "control"
    arm.mkdir()
    with tracking.arm_run(arm, "exp", "p-control", {"arm": "control"}, {"a": 1}) as run:
        for step in range(1, 6):  # killed after step 5; its last checkpoint was at step 2
            tracking.log_metrics({"train_loss": 1.0 / step}, step=step)
        run_id = run.info.run_id
    with tracking.arm_run(arm, "exp", "p-control", {"arm": "control"}, {"a": 1}) as again:
        assert again.info.run_id == run_id  # the same run continues
        for step in range(3, 9):  # the resumed leg replays steps 3 to 5, then goes on
            tracking.log_metrics({"train_loss": 1.0 / step, "eval_loss": 2.0}, step=step)
    history = mlflow.MlflowClient(store).get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, 9))
    evals = mlflow.MlflowClient(store).get_metric_history(run_id, "eval_loss")
    assert sorted(m.step for m in evals) == list(range(3, 9))  # a new metric logs from the start


def test_a_run_left_running_by_a_killed_arm_is_closed(store, tmp_path):
    import mlflow

    arm = tmp_path / "experiment"
    arm.mkdir()
    client = mlflow.MlflowClient(store)
    exp = client.create_experiment("exp")
    run = client.create_run(exp)  # what a SIGKILLed arm leaves: RUNNING for ever
    (arm / tracking.RUN_ID_FILE).write_text(run.info.run_id)
    assert tracking.close_stale_run(arm, store, "KILLED") == run.info.run_id
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert tracking.close_stale_run(arm, store, "FAILED") is None  # ended runs stay as they are
    assert tracking.close_stale_run(tmp_path / "never-started", store, "FAILED") is None


def test_an_sqlite_store_that_cannot_be_opened_fails_at_once(tmp_path):
    import time

    import pytest

    from training.experiment.tracking import ensure_experiment

    started = time.monotonic()
    for uri, problem in ((f"sqlite:///{tmp_path}/missing/x.db", "no such directory"),
                         ("sqlite:////proc/x.db", "cannot open /proc/x.db")):
        with pytest.raises(ValueError, match=problem):
            ensure_experiment(uri, "pair")
    assert time.monotonic() - started < 10  # MLflow alone retries for about two minutes
    assert not (tmp_path / "missing").exists()


def test_printed_urls_lose_passwords_and_signatures():
    from training.experiment.tracking import redacted

    text = "GET https://a.blob.core.windows.net/l/std_log.txt?sv=2021&sig=S3CR3T&se=2026 failed"
    assert redacted(text) == ("GET https://a.blob.core.windows.net/l/std_log.txt?sv=2021&sig=***"
                              "&se=*** failed")
    assert redacted("http://bob:pw@h:5000/x?access_token=T0K") == "http://h:5000/x?access_token=***"
