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


# ----------------------------------------------------------------------------- every field classified
def config_keys(model, prefix="") -> set[str]:
    """Every param key `tracking.flatten(cfg.model_dump())` can give for the config model, each
    optional section both set and unset (the recipe leaves out arms, eval and sweep)."""
    from typing import get_args

    from pydantic import BaseModel

    keys = set()
    for name, f in model.model_fields.items():
        if not prefix and name in ("arms", "eval", "sweep"):
            continue
        keys.add(f"{prefix}{name}")
        for sub in (f.annotation, *get_args(f.annotation)):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                keys |= config_keys(sub, f"{prefix}{name}.")
    return keys


def logged_fields(tmp_path, tokenizer, monkeypatch) -> set[tuple[str, str]]:
    """What an arm's run logs, from the code that logs it: the recipe's params and tags
    (recipe.train.run_record, on data params from recipe.arm_data with rows cut, shared eval
    set and holdout), every key of the experiment file, and the hosted backend's params."""
    from tests.training.pairs import DATA, write_experiment
    from tests.training.recipe.test_arm_data import State
    from training.experiment.config import ExperimentConfig, Training, load_config
    from training.hosted.results import METADATA_PARAMS
    from training.recipe.arm_data import prepare_arm_data
    from training.recipe.train import run_record

    monkeypatch.setenv("PAIRED_FINETUNE_DATA_CACHE", str(tmp_path / "cache"))
    data = {}
    for eval_file in (DATA / "eval.jsonl", None):
        t = Training(max_steps=2, max_seq_length=70, long_examples="truncate",
                     eval_fraction=0.2)
        data |= prepare_arm_data(t, tokenizer, "control", tmp_path / "arm", DATA / "control.jsonl",
                                 eval_file, State(local_main=True)).params
    cfg = load_config(write_experiment(tmp_path / "exp"))
    params, tags = run_record(cfg, data, "control", "p", 0, None, precision="fp32",
                              sharding="none", n_trainable=1, model_path="/m")
    hosted = {"backend", "base_model", "training.seed", "pair_id", "arm", "train_file",
              "validation_file", *METADATA_PARAMS.values(), "config_sha256", "code_version"}
    return ({("param", k) for k in params.keys() | config_keys(ExperimentConfig) | hosted}
            | {("tag", k) for k in tags})


def test_every_field_an_arm_logs_has_a_class(tmp_path, tiny_tokenizer, monkeypatch):
    fields = logged_fields(tmp_path, tiny_tokenizer, monkeypatch)
    assert {("param", "data.train_too_long"), ("param", "data.eval_too_long"),
            ("param", "data.eval"), ("param", "data.eval_sha256"), ("param", "lora.r"),
            ("param", "training.long_examples"), ("tag", "parent_pair_id")} <= fields
    unclassified = sorted(f for f in fields if tracking.field_class(f[1], f[0]) is None)
    assert not unclassified, f"add these to experiment.tracking.FIELDS: {unclassified}"
    assert {tracking.field_class(k, kind) for kind, k in fields} <= set(tracking.CLASSES)
    # what a fair pair may differ in is a data fact, what it must not, a setting
    klass = {k: tracking.field_class(k) for k in ("data.train_too_long", "data.train_rows",
                                                   "data.eval_sha256", "training.seed",
                                                   "recipe.training.seed", "arm")}
    assert klass == {"data.train_too_long": tracking.DATA, "data.train_rows": tracking.DATA,
                     "data.eval_sha256": tracking.SETTING, "training.seed": tracking.SETTING,
                     "recipe.training.seed": tracking.SETTING, "arm": tracking.IDENTITY}
    assert tracking.field_class("final_eval_loss", "metric") == tracking.RESULT


def test_a_field_added_without_a_class_fails(tmp_path, tiny_tokenizer, monkeypatch):
    from training.recipe import train

    real = train.run_record

    def with_a_new_param(*args, **kw):
        params, tags = real(*args, **kw)
        return {**params, "data.new_count": 3}, {**tags, "new_tag": "x"}

    monkeypatch.setattr(train, "run_record", with_a_new_param)
    fields = logged_fields(tmp_path, tiny_tokenizer, monkeypatch)
    missing = {f for f in fields if tracking.field_class(f[1], f[0]) is None}
    assert missing == {("param", "data.new_count"), ("tag", "new_tag")}
    assert tracking.field_class("new_section.x") is None  # a new config section, too


def test_the_recipe_logs_the_rows_lost_even_when_none_were():
    from training.recipe.train import run_record

    class Cfg:
        base_model, method, base_model_revision = "tiny-llama", "full", None

        def model_dump(self, **kw):
            return {"training": {"seed": 1}}

        def sha256(self):
            return "c" * 64

    params, _ = run_record(Cfg(), {"data.train_rows": 10}, "control", "p", 0, None,
                           precision="fp32", sharding="none", n_trainable=1, model_path="/m")
    assert params["data.train_too_long"] == params["data.eval_too_long"] == 0
    params, _ = run_record(Cfg(), {"data.train_too_long": 2, "data.eval_too_long": 1}, "control",
                           "p", 0, None, precision="fp32", sharding="none", n_trainable=1,
                           model_path="/m")
    assert (params["data.train_too_long"], params["data.eval_too_long"]) == (2, 1)
