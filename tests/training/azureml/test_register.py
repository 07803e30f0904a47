"""`train register`: on Azure ML through the real MLClient (fake workspace transport; the
registration requests are asserted), and locally into a sqlite MLflow store's model registry."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.training.fake_azure import OUTPUTS, WORKSPACE, FakeCredential
from tests.training.fake_azure_assets import FakeWorkspace
from training.azureml.jobs import asset_id
from training.cli import main
from training.experiment.registry import metric_tags

PAIR = "paired-comments-1a2b3c4d"
EVAL_ID = ("azureml:/subscriptions/x/resourceGroups/rg/providers/Microsoft.MachineLearningServices"
           "/workspaces/w/data/eval/versions/1")
FINAL = {"control": 0.91, "experiment": 0.84}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite MLflow store holding both arms' runs of PAIR (as the recipe tags them)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("paired-comments")
    runs = {}
    for arm, loss in FINAL.items():
        run = client.create_run(exp, tags={"pair_id": PAIR, "arm": arm})
        client.log_metric(run.info.run_id, "eval_loss", loss + 0.1, step=10)
        client.log_metric(run.info.run_id, "final_eval_loss", loss, step=20)
        client.log_metric(run.info.run_id, "final_train_loss", loss - 0.05, step=20)
        client.set_terminated(run.info.run_id)
        runs[arm] = run.info.run_id
    return uri, runs


@pytest.fixture
def workspace():
    ws = FakeWorkspace()
    for arm in ("control", "experiment"):
        ws.add_job(f"{PAIR}-{arm}", arm, PAIR,
                   inputs={"train": f"azureml:{arm}-train:1", "eval": EVAL_ID})
    return ws


@pytest.fixture
def register_azure(tmp_path, workspace, store):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(OUTPUTS))

    def invoke(*args, tracking=None):
        return CliRunner().invoke(
            main, ["register", *args, "--outputs-file", str(outputs)],
            obj={"azure_transport": workspace, "azure_credential": FakeCredential(),
                 "mlflow_tracking_uri": tracking or store[0]})

    return invoke


def model_puts(ws) -> dict:
    return {r.path.split("/models/")[1]: r.body["properties"] for r in ws.model_puts()}


def test_registers_both_arms_from_the_jobs_outputs(register_azure, workspace):
    result = register_azure(PAIR)
    assert result.exit_code == 0, result.output
    puts = model_puts(workspace)
    assert set(puts) == {"paired-comments-control/versions/1",
                         "paired-comments-experiment/versions/1"}
    for arm in ("control", "experiment"):
        body = puts[f"paired-comments-{arm}/versions/1"]
        assert body["modelUri"] == f"azureml://jobs/{PAIR}-{arm}/outputs/arm_dir/paths/model"
        assert body["modelType"] == "custom_model"
        tags = body["tags"]
        assert tags["pair_id"] == PAIR and tags["arm"] == arm and tags["job"] == f"{PAIR}-{arm}"
        assert float(tags["final_eval_loss"]) == FINAL[arm]
        assert "final_train_loss" in tags and "eval_loss" not in tags
        assert tags["data_train"] == f"azureml:{arm}-train:1"
        assert tags["data_eval"] == "azureml:eval:1"  # the service's long id, shortened
        assert tags["config_sha256"] == "c0ffee"  # the job's provenance tags come along
        assert tags["base_model_revision"] == "0123456789abcdef"
    assert "version 1: registered" in result.output
    # what one registration sends, in order (see the module docstring of training.register)
    sent = [(r.method, r.path.split(f"/workspaces/{WORKSPACE}/")[1]) for r in workspace.requests]
    assert sent[:2] == [("GET", f"jobs/{PAIR}-control"), ("GET", f"jobs/{PAIR}-experiment")]
    assert sent[-4:] == [("GET", "models/paired-comments-experiment/versions"),
                         ("GET", "models/paired-comments-experiment/versions"),
                         ("GET", "models/paired-comments-experiment"),
                         ("PUT", "models/paired-comments-experiment/versions/1")]


def test_registering_again_adds_no_version(register_azure, workspace):
    assert register_azure(PAIR).exit_code == 0
    workspace.requests.clear()
    again = register_azure(PAIR)
    assert again.exit_code == 0, again.output
    assert workspace.model_puts() == []
    assert again.output.count("already registered") == 2
    # a new pair of the same experiment gets the next versions
    new = "paired-comments-99999999"
    for arm in ("control", "experiment"):
        workspace.add_job(f"{new}-{arm}", arm, new)
    assert register_azure(new).exit_code == 0
    assert set(model_puts(workspace)) == {"paired-comments-control/versions/2",
                                          "paired-comments-experiment/versions/2"}


@pytest.mark.parametrize("status", ["Failed", "Running", "Canceled"])
def test_an_arm_that_did_not_complete_is_refused(register_azure, workspace, status):
    workspace.set_status(f"{PAIR}-experiment", status)
    result = register_azure(PAIR)
    assert result.exit_code == 1, result.output
    assert f"experiment ({PAIR}-experiment: {status})" in result.output
    assert workspace.model_puts() == []  # not even the completed arm


def test_unreachable_tracking_store_registers_without_metrics(register_azure, workspace):
    result = register_azure(PAIR, tracking="http://127.0.0.1:9")
    assert result.exit_code == 0, result.output
    assert "final metrics not tagged" in result.output
    for body in model_puts(workspace).values():
        assert not any(k.startswith("final_") for k in body["tags"])
        assert body["tags"]["pair_id"] == PAIR


def test_name_and_replicates(register_azure, workspace):
    for k in (0, 1):
        for arm in ("control", "experiment"):
            workspace.add_job(f"rep-r{k}-{arm}", arm, f"rep-r{k}",
                              tags={"parent_pair_id": "rep", "replicate": str(k)})
    result = register_azure("rep")
    assert result.exit_code == 2 and "--replicate" in result.output
    result = register_azure("rep", "--replicate", "2")
    assert result.exit_code == 2 and "no replicate 2: the pair's replicates are 0, 1" in \
        result.output
    result = register_azure("rep", "--replicate", "1", "--name", "comments-v2")
    assert result.exit_code == 0, result.output
    puts = model_puts(workspace)
    assert set(puts) == {"comments-v2-control/versions/1", "comments-v2-experiment/versions/1"}
    assert puts["comments-v2-control/versions/1"]["tags"]["pair_id"] == "rep-r1"


def test_unknown_pair_is_exit_2(register_azure, workspace):
    result = register_azure("no-such-pair")
    assert result.exit_code == 2 and "no pair 'no-such-pair'" in result.output
    assert workspace.model_puts() == []


def test_asset_id_and_metric_tags():
    assert asset_id(EVAL_ID) == "azureml:eval:1"
    assert asset_id("azureml:control-train:3") == "azureml:control-train:3"
    assert metric_tags({"final_eval_loss": 0.123456789, "eval_loss": 2.0}) == {
        "final_eval_loss": "0.123457"}
    assert metric_tags({"eval_loss": 2.0, "other": 1.0, "nan": float("nan")}) == {
        "final_eval_loss": "2"}


# ----------------------------------------------------------------------------- local
def local_pair(root: Path, pair: str, runs: dict | None = None, finished=("control", "experiment")):
    """A pair folder as `train run` leaves it (model/, metrics.json, the MLflow run id)."""
    pair_dir = root / pair
    pair_dir.mkdir(parents=True)
    (pair_dir / "pair.json").write_text(json.dumps({
        "pair_id": pair, "name": "paired-comments-local", "base_model": "tiny-llama",
        "base_model_revision": "fp-1234", "config_sha256": "c0ffee",
        "data_sha256": {"control": "aa" * 32, "experiment": "bb" * 32, "eval": "cc" * 32}}))
    for arm in ("control", "experiment"):
        (pair_dir / arm / "model").mkdir(parents=True)
        (pair_dir / arm / "model" / "config.json").write_text("{}")
        if arm in finished:
            (pair_dir / arm / "metrics.json").write_text(json.dumps({
                "eval_loss": FINAL[arm], "train_loss": 0.7, "global_step": 20,
                "stopped_early": False, "precision": "fp32"}))
        if runs:
            (pair_dir / arm / "mlflow_run_id").write_text(runs[arm])
    return pair_dir


def test_local_pair_into_the_mlflow_registry(tmp_path, store):
    from mlflow import MlflowClient

    uri, runs = store
    local_pair(tmp_path / "runs", PAIR, runs)
    argv = ["register", PAIR, "--tracking-uri", uri, "--output-dir", str(tmp_path / "runs")]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    client = MlflowClient(uri, registry_uri=uri)
    for arm in ("control", "experiment"):
        (version,) = client.search_model_versions(f"name = 'paired-comments-local-{arm}'")
        assert version.source == str((tmp_path / "runs" / PAIR / arm / "model").resolve())
        assert version.run_id == runs[arm]
        assert version.tags["pair_id"] == PAIR and version.tags["arm"] == arm
        assert float(version.tags["final_eval_loss"]) == FINAL[arm]
        assert version.tags["final_global_step"] == "20"
        assert version.tags["data_train_sha256"] == ("aa" if arm == "control" else "bb") * 32
        assert version.tags["data_eval_sha256"] == "cc" * 32
        assert version.tags["base_model_revision"] == "fp-1234"
    again = CliRunner().invoke(main, argv)
    assert again.exit_code == 0 and again.output.count("already registered") == 2
    assert len(client.search_model_versions("name = 'paired-comments-local-control'")) == 1


def test_local_unfinished_arm_and_unknown_pair(tmp_path, store):
    from mlflow import MlflowClient

    uri, _ = store
    local_pair(tmp_path / "runs", "half-pair", finished=("control",))
    argv = ["register", "half-pair", "--tracking-uri", uri, "--output-dir", str(tmp_path / "runs")]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1 and "experiment" in result.output
    assert "Nothing was registered" in result.output
    names = {m.name for m in MlflowClient(uri, registry_uri=uri).search_registered_models()}
    assert not any(n.startswith("half") for n in names)
    result = CliRunner().invoke(main, ["register", "nope", "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "half-pair" in result.output  # the pairs that are there


def test_a_failed_second_registration_says_what_was_registered(register_azure, workspace):
    workspace.fail("PUT", r"/models/paired-comments-experiment/versions/", 400)
    result = register_azure(PAIR)
    assert result.exit_code == 1, result.output
    assert "control: paired-comments-control version 1: registered" in result.output
    assert "only part of the pair is registered" in result.output
    workspace.routes.pop(0)  # the service is back: the same command completes the pair
    again = register_azure(PAIR)
    assert again.exit_code == 0, again.output
    assert "control: paired-comments-control version 1: already registered" in again.output
    assert "experiment: paired-comments-experiment version 1: registered" in again.output


@pytest.mark.parametrize("pair_id", ["../../x", "a b", "UPPER", "p'q"])
def test_a_pair_id_that_cannot_name_a_pair_sends_nothing(register_azure, workspace, tmp_path,
                                                         pair_id):
    result = register_azure(pair_id)
    assert result.exit_code == 2 and "PAIR" in result.output, result.output
    assert workspace.requests == []
    local = CliRunner().invoke(main, ["register", pair_id, "--output-dir", str(tmp_path)])
    assert local.exit_code == 2 and "PAIR" in local.output, local.output


def test_a_model_name_too_long_for_one_arm_registers_neither(register_azure, workspace):
    long_name = "e" * 245  # 253 with -control fits, 256 with -experiment does not
    for arm in ("control", "experiment"):
        workspace.add_job(f"long-{arm}", arm, "long", experiment=long_name)
    result = register_azure("long")
    assert result.exit_code == 2 and "choose one with --name" in result.output, result.output
    assert workspace.model_puts() == []


def test_the_tracking_password_is_never_printed(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    local_pair(tmp_path / "runs", PAIR)
    uri = "http://alice:S3CRETPW@127.0.0.1:9/"
    result = CliRunner().invoke(main, ["register", PAIR, "--tracking-uri", uri,
                                       "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 1, result.output
    assert "MLflow model registry at http://127.0.0.1:9/" in result.output
    assert "S3CRETPW" not in result.output and "alice" not in result.output


def test_a_local_replicate_by_its_own_pair_id_and_a_store_without_its_runs(tmp_path):
    import shutil

    from mlflow import MlflowClient

    root = tmp_path / "runs"
    pair_dir = local_pair(root, "reps")  # the flat layout, then as two replicates r0/ and r1/
    (pair_dir / "r0").mkdir()
    for arm in ("control", "experiment"):
        (pair_dir / arm).rename(pair_dir / "r0" / arm)
    shutil.copytree(pair_dir / "r0", pair_dir / "r1")
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"  # holds none of the pair's runs
    argv = ["register", "--tracking-uri", uri, "--output-dir", str(root)]
    out_of_range = CliRunner().invoke(main, [*argv[:1], "reps", "--replicate", "2", *argv[1:]])
    assert out_of_range.exit_code == 2, out_of_range.output
    assert "no replicate 2: the pair's replicates are 0, 1" in out_of_range.output
    result = CliRunner().invoke(main, [*argv[:1], "reps-r1", *argv[1:]])  # as train run names it
    assert result.exit_code == 0, result.output
    assert result.output.count("note: not linked to a run") == 2
    client = MlflowClient(uri, registry_uri=uri)
    (version,) = client.search_model_versions("name = 'paired-comments-local-control'")
    assert version.tags["pair_id"] == "reps-r1" and version.tags["replicate"] == "1"
