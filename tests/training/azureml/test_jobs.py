"""The pair's Azure ML jobs, built offline: fair by construction, checked before any request."""

from pathlib import Path

import pytest
import yaml

from tests.training.fake_azure import OUTPUTS
from training.azureml.jobs import (
    JobSpecError,
    azure_pair_id,
    check_references,
    job_yaml,
    plan_pair,
)
from training.experiment.config import load_config, parse_config
from training.experiment.stack import parse_outputs

REPO = Path(__file__).resolve().parents[3]


def config(**azure):
    cfg = load_config(REPO / "experiments" / "paired-comments.yaml")
    data = cfg.model_dump(mode="json")
    data["azure"] = {**data["azure"], **azure}
    return parse_config(data, "test")


def outputs(**changes):
    return parse_outputs({**OUTPUTS, **changes}, "test")


def test_the_two_jobs_differ_only_in_data_names_and_arm():
    control, experiment = plan_pair(config(), outputs(), "p-1", "abc123")
    a, b = vars(control).copy(), vars(experiment).copy()
    assert a.pop("inputs") == {"train": "azureml:control-train:1", "eval": "azureml:eval:1"}
    assert b.pop("inputs") == {"train": "azureml:experiment-train:1", "eval": "azureml:eval:1"}
    assert (a.pop("name"), b.pop("name")) == ("p-1-control", "p-1-experiment")
    assert (a.pop("arm"), b.pop("arm")) == ("control", "experiment")
    assert a.pop("output_path") == "azureml://datastores/training_data/paths/pairs/p-1/control/"
    assert b.pop("output_path") == "azureml://datastores/training_data/paths/pairs/p-1/experiment/"
    assert a["tags"].pop("arm") == "control" and b["tags"].pop("arm") == "experiment"
    assert a["tags"].pop("train_data") == "azureml:control-train:1"
    assert b["tags"].pop("train_data") == "azureml:experiment-train:1"
    assert a == b
    assert a["tags"] == {"pair_id": "p-1", "config_sha256": config().sha256(),
                         "code_version": "abc123", "seed": "42",
                         "base_model": "meta-llama/Meta-Llama-3-8B", "base_model_revision": "",
                         "eval_data": "azureml:eval:1", "compute": "gpu-cluster",
                         "environment": "azureml:paired-finetune-train:abc123",
                         "resources": "1 nodes x 1, shm 16g, timeout 36000"}
    assert a["environment"] == "azureml:paired-finetune-train:abc123"
    assert a["compute"] == "gpu-cluster"
    assert control.command.replace("control", "ARM") == experiment.command.replace(
        "experiment", "ARM")


def test_command_never_wraps_torchrun_and_uses_every_input():
    job = plan_pair(config(instance_count=2, processes_per_node=8), outputs(), "p", "v")[0]
    assert "torchrun" not in job.command
    assert "--train-file ${{inputs.train}}" in job.command
    assert "--eval-file ${{inputs.eval}}" in job.command
    assert "--output-dir ${{outputs.arm_dir}}" in job.command
    assert (job.instance_count, job.processes_per_node) == (2, 8)


def test_without_a_shared_eval_asset_there_is_no_eval_input():
    assets = {k: v for k, v in OUTPUTS["data_assets"].items() if k != "eval"}
    job = plan_pair(config(), outputs(data_assets=assets), "p", "v")[0]
    assert set(job.inputs) == {"train"} and "--eval-file" not in job.command


def test_pair_id_follows_config_and_asset_versions():
    cfg, out = config(), outputs()
    assert azure_pair_id(cfg, out) == azure_pair_id(config(), outputs())
    bumped = {**OUTPUTS["data_assets"], "control": {"name": "control-train", "version": "2"}}
    assert azure_pair_id(cfg, outputs(data_assets=bumped)) != azure_pair_id(cfg, out)
    data = cfg.model_dump(mode="json")
    data["training"]["learning_rate"] = 1e-4
    assert azure_pair_id(parse_config(data, "x"), out) != azure_pair_id(cfg, out)
    assert azure_pair_id(cfg, out).startswith("paired-comments-")


def test_pair_id_ignores_the_verdict_budget_and_prices_but_not_the_world_size():
    out = outputs()
    data = config().model_dump(mode="json")
    data["success"] = {"max_eval_loss": 0.2}
    data["budget_usd"] = 1.0
    data["azure"]["price_per_hour"] = 99.0
    assert azure_pair_id(parse_config(data, "x"), out) == azure_pair_id(config(), out)
    # more GPUs -> a bigger global batch -> other weights: another pair
    assert azure_pair_id(config(processes_per_node=2), out) != azure_pair_id(config(), out)


def test_replicates_share_the_config_and_differ_in_seed():
    data = config().model_dump(mode="json")
    data["training"]["replicates"] = 3
    jobs = plan_pair(parse_config(data, "x"), outputs(), "p", "v")
    assert [j.name for j in jobs] == [f"p-r{k}-{arm}" for k in range(3)
                                      for arm in ("control", "experiment")]
    assert {j.config_file for j in jobs} == {"pair.yaml"}
    assert [j.tags["seed"] for j in jobs] == ["42", "42", "43", "43", "44", "44"]
    assert all(j.tags["parent_pair_id"] == "p" for j in jobs)
    assert "--replicate 2 --parent-pair-id p" in jobs[-1].command


@pytest.mark.parametrize("azure, out, message", [
    ({"compute": "other-cluster"}, {}, "not a cluster of this stack"),
    ({}, {"training_environment": None}, "no environment"),
])
def test_checks_before_any_request(azure, out, message):
    with pytest.raises(JobSpecError, match=message):
        plan_pair(config(**azure), outputs(**out), "p", "v")


@pytest.mark.parametrize("pair_id", ["../x", "a b", "-x", "x" * 300, "p/q", ""])
def test_pair_ids_that_cannot_name_a_job(pair_id):
    with pytest.raises(JobSpecError, match="--pair-id"):
        plan_pair(config(), outputs(), pair_id, "v")


def test_unknown_references_in_the_command_are_caught():
    job = plan_pair(config(), outputs(), "p", "v")[0]
    broken = type(job)(**{**vars(job), "inputs": {"eval": "azureml:eval:1"}})
    with pytest.raises(JobSpecError, match=r"inputs.train"):
        check_references(broken)


@pytest.mark.parametrize("field, value", [
    ("instance_count", 0), ("processes_per_node", -1), ("shm_size", "lots"),
    ("max_run_minutes", 0), ("compute", "x"), ("environment", "no version"),
    ("price_per_hour", 1e308), ("gpu_peak_tflops", 1e6), ("gpu_memory_gib", 1e9),
])
def test_azure_section_is_validated(field, value):
    from training.experiment.config import ConfigError

    data = config().model_dump(mode="json")
    data["azure"][field] = value
    with pytest.raises(ConfigError, match=f"azure.{field}"):
        parse_config(data, "x")


def test_dry_run_yaml_round_trips_through_load_job(tmp_path):
    from azure.ai.ml import load_job

    (tmp_path / "code").mkdir()
    job = plan_pair(config(max_run_minutes=90, instance_count=2, processes_per_node=4),
                    outputs(), "p", "v")[1]
    path = tmp_path / "job.yml"
    path.write_text(job_yaml(job, "./code"))
    text = yaml.safe_load(path.read_text())
    assert text["code"] == "./code"
    loaded = load_job(path)
    assert loaded.name == "p-experiment"
    assert loaded.command == job.command
    assert loaded.distribution.process_count_per_instance == 4
    assert loaded.resources.instance_count == 2 and loaded.resources.shm_size == "16g"
    assert loaded.limits.timeout == 90 * 60
    assert loaded.inputs["train"].path.endswith("experiment-train:1")
    assert loaded.outputs["arm_dir"].mode == "rw_mount"
    assert loaded.outputs["arm_dir"].path.endswith("/paths/pairs/p/experiment/")
    assert loaded.tags["arm"] == "experiment"


def test_an_experiment_named_like_a_sweep_still_gets_a_pair_id():
    from training.azureml.jobs import azure_pair_id
    from training.experiment.pair import check_pair_id

    for name in ("lr-sweep", "my-sweep-test"):
        pair_id = azure_pair_id(config().model_copy(update={"name": name}), outputs())
        assert check_pair_id(pair_id) == pair_id and pair_id.startswith(name.replace(
            "sweep", "sweeps"))


@pytest.mark.parametrize("size, same", [("16384m", "16g"), ("16g", "16g"), ("1536m", "1536m"),
                                         ("2097152k", "2g"), ("1024b", "1k"), ("1000m", "1000m")])
def test_one_shm_size_has_one_spelling_in_the_resources_tag(size, same):
    from training.azureml.jobs import shm_in_largest_unit

    assert shm_in_largest_unit(size) == same
