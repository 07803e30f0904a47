"""`train sweep` and `train submit --from-sweep`, through the real MLClient and the fake transport."""

import json
import math
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from training.azureml.sweep import sweep_problems
from training.cli import main
from training.experiment.config import load_config, parse_config

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "experiments" / "paired-comments.yaml"


@pytest.fixture(autouse=True)
def _pinned(hub_cache):
    """The example's base model pins to the cached commit (tests are offline)."""


def with_sweep(tmp_path, **sweep):
    data = yaml.safe_load(CONFIG.read_text())
    data["sweep"] = {**data["sweep"], **sweep}
    path = tmp_path / "pair.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_sweep_job_body(train, fake):
    result = train("sweep", "--config", str(CONFIG))
    assert result.exit_code == 0, result.output
    (put,) = fake.sent("PUT", "/jobs/")
    body = put.body["properties"]
    assert put.path.endswith("-sweep-control")
    assert body["jobType"] == "Sweep"
    assert body["samplingAlgorithm"]["samplingAlgorithmType"] == "Random"
    assert body["objective"] == {"goal": "minimize", "primaryMetric": "eval_loss"}
    low, high = body["searchSpace"]["training_learning_rate"][1]
    assert (low, high) == pytest.approx((math.log(5e-5), math.log(5e-4)))  # Azure: exponents
    assert body["searchSpace"]["lora_r"] == ["choice", [[8, 16, 32]]]
    assert body["limits"]["maxTotalTrials"] == 12 and body["limits"]["maxConcurrentTrials"] == 4
    assert body["limits"]["timeout"] == "PT12H" and body["limits"]["trialTimeout"] == "PT10H"
    assert "worst case 176.16 USD" in result.output and "within budget_usd 200" in result.output
    assert body["earlyTermination"]["policyType"] == "Bandit"
    command = body["trial"]["command"]
    assert "--set training.learning_rate=${{search_space.training_learning_rate}}" in command
    assert "--set lora.r=${{search_space.lora_r}}" in command
    assert "--arm control" in command and "control-train" in json.dumps(body["inputs"])
    assert "uri" not in body["outputs"]["arm_dir"]  # every trial writes its own folder
    assert body["tags"]["tuned_on_arm"] == "control"
    assert body["tags"]["pair_id"].endswith("-sweep-control")  # never the pair's own id
    again = train("sweep", "--config", str(CONFIG))
    assert again.exit_code == 0 and "exists already" in again.output
    assert len(fake.sent("PUT", "/jobs/")) == 1


@pytest.mark.parametrize("sweep, message", [
    ({"sampling": "grid"}, "grid sampling takes only choice"),
    ({"sampling": "bayesian"}, "bayesian sampling takes choice, uniform or quniform"),
    ({"sampling": "bayesian", "search_space": {"lora.r": {"type": "choice", "values": [8]}}},
     "bayesian sampling takes no early termination"),
    ({"search_space": {"training.nonsense": {"type": "choice", "values": [1]}}},
     "not a field of training or lora"),
    ({"search_space": {"name": {"type": "choice", "values": ["x"]}}},
     "not a field of training or lora"),
    ({"search_space": {"lora.r": {"type": "uniform", "min_value": 4, "max_value": 64}}},
     "an integer field"),
    ({"search_space": {"training.learning_rate": {"type": "uniform", "min_value": -1,
                                                  "max_value": 1}}}, "learning_rate"),
    ({"search_space": {"training.learning_rate": {"type": "uniform", "min_value": 1e-3,
                                                  "max_value": 1e-4}}}, "min_value must be below"),
    ({"search_space": {"training.learning_rate": {"type": "choice", "values": ["fast"]}}},
     "learning_rate"),
    ({"search_space": {"training.learning_rate": {"type": "quniform", "min_value": 1e-5,
                                                  "max_value": 1e-3}}}, "q goes with quniform"),
    ({"objective": "accuracy"}, "sweep.objective"),
    ({"max_total_trials": 1001}, "sweep.max_total_trials"),
    ({"max_total_trials": 0}, "sweep.max_total_trials"),
    ({"max_concurrent_trials": 101}, "sweep.max_concurrent_trials"),
    ({"early_termination": {"type": "optimistic"}}, "sweep.early_termination"),
    ({"early_termination": {"type": "bandit", "truncation_percentage": 50}},
     "truncation_percentage belongs to type truncation"),
    ({"search_space": {"training.learning_rate": {"type": "quniform", "min_value": 1e-4,
                                                  "max_value": 1e-3, "q": 0.01}}},
     "every trial gets 0"),
    ({"search_space": {"lora.dropout": {"type": "quniform", "min_value": 0.1, "max_value": 0.9,
                                        "q": 0.6}}}, "dropout"),
    ({"search_space": {"training.seed": {"type": "choice", "values": [1, 2]}}},
     "not a hyperparameter a sweep may tune"),
    ({"search_space": {"training.replicates": {"type": "choice", "values": [1, 2]}}},
     "not a hyperparameter a sweep may tune"),
    ({"timeout_minutes": 10**11}, "sweep.timeout_minutes"),
])
def test_every_sweep_error_is_exit_2_before_any_request(train, fake, tmp_path, sweep, message):
    result = train("sweep", "--config", str(with_sweep(tmp_path, **sweep)))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not fake.sent("PUT")


def test_a_hosted_experiment_is_not_swept(train, fake):
    from tests.training.pairs import REPO as ROOT

    result = train("sweep", "--config", str(ROOT / "experiments" / "hosted-openai.yaml"))
    assert result.exit_code == 2 and "train sweep runs on Azure ML" in result.output
    assert not fake.requests


def test_no_sweep_section_and_no_stack(tmp_path):
    data = yaml.safe_load(CONFIG.read_text())
    del data["sweep"]
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(data))
    assert "no sweep section" in sweep_problems(load_config(path))[0]
    result = CliRunner().invoke(main, ["sweep", "--config", str(CONFIG)])
    assert result.exit_code == 2 and "--stack" in result.output


def test_epochs_cannot_be_swept_while_max_steps_wins(tmp_path):
    data = yaml.safe_load(CONFIG.read_text())
    data["training"]["max_steps"] = 100
    data["sweep"]["search_space"] = {"training.epochs": {"type": "choice", "values": [1, 2]}}
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(data))
    assert "max_steps is set" in sweep_problems(load_config(path))[0]


def test_booleans_can_be_chosen(tmp_path):
    cfg = load_config(CONFIG)
    data = cfg.model_dump(mode="json")
    data["sweep"]["search_space"] = {"training.packing": {"type": "choice",
                                                          "values": [True, False]}}
    assert sweep_problems(parse_config(data, "x")) == []


def test_grid_of_choices_is_valid():
    cfg = load_config(CONFIG)
    data = cfg.model_dump(mode="json")
    data["sweep"]["sampling"] = "grid"
    data["sweep"]["search_space"] = {"lora.r": {"type": "choice", "values": [8, 16]},
                                     "training.warmup": {"type": "choice", "values": [0.0, 0.1]}}
    assert sweep_problems(parse_config(data, "x")) == []


def test_dry_run_sweep_yaml_round_trips(train, fake, tmp_path):
    from azure.ai.ml import load_job

    out = tmp_path / "sweep"
    result = train("sweep", "--config", str(CONFIG), "--dry-run", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert fake.requests == []
    (path,) = out.glob("*.yml")
    job = load_job(path)
    assert job.type == "sweep"
    assert str(getattr(job.sampling_algorithm, "type", job.sampling_algorithm)) == "random"
    assert "${{search_space.lora_r}}" in job.trial.command
    assert set(job.search_space) == {"training_learning_rate", "lora_r"}
    assert job.limits.max_total_trials == 12
    assert job.name.endswith("-sweep-control") and job.experiment_name == "paired-comments"
    assert job.tags["tuned_on_arm"] == "control" and job.tags["config_sha256"]


def _finished_sweep(fake, train):
    assert train("sweep", "--config", str(CONFIG)).exit_code == 0
    name = next(iter(fake.jobs))
    fake.jobs[name]["properties"]["status"] = "Completed"
    fake.jobs[name]["properties"]["properties"]["best_child_run_id"] = f"{name}_3"
    trial = json.loads(json.dumps(fake.jobs[name]["properties"]["trial"]))
    fake.jobs[f"{name}_3"] = {
        "id": fake._job_id(f"{name}_3"), "name": f"{name}_3", "type": "x",
        "properties": {"jobType": "Command", "status": "Completed", "properties": {},
                       "command": trial["command"], "environmentId": trial["environmentId"],
                       "codeId": trial["codeId"], "computeId": "gpu-cluster",
                       "inputs": {"training_learning_rate": {"jobInputType": "literal",
                                                             "value": "0.00012"},
                                  "lora_r": {"jobInputType": "literal", "value": "32"}}}}
    return name


def test_from_sweep_applies_the_best_trial_to_both_arms(train, fake, tmp_path):
    name = _finished_sweep(fake, train)
    out = tmp_path / "jobs"
    dry = train("submit", "--config", str(CONFIG), "--from-sweep", name, "--dry-run",
                "--out", str(out))
    assert dry.exit_code == 0, dry.output
    shipped = yaml.safe_load((out / "code" / "pair.yaml").read_text())
    assert shipped["training"]["learning_rate"] == 0.00012 and shipped["lora"]["r"] == 32

    result = train("submit", "--config", str(CONFIG), "--from-sweep", name)
    assert result.exit_code == 0, result.output
    bodies = [r.body["properties"] for r in fake.sent("PUT", "/jobs/")
              if not r.path.endswith("-sweep-control")]
    assert len(bodies) == 2
    tags = [b["tags"] for b in bodies]
    assert {t["arm"] for t in tags} == {"control", "experiment"}
    for t in tags:
        assert (t["from_sweep"], t["tuned_on_arm"], t["sweep_trial"]) == (
            name, "control", f"{name}_3")
    assert tags[0]["config_sha256"] == tags[1]["config_sha256"]
    assert tags[0]["config_sha256"] != load_config(CONFIG).sha256()  # the tuned values count


def test_from_sweep_at_another_world_size_is_refused(train, fake, tmp_path):
    name = _finished_sweep(fake, train)
    data = yaml.safe_load(CONFIG.read_text())
    data["azure"]["instance_count"] = 8
    bigger = tmp_path / "pair.yaml"
    bigger.write_text(yaml.safe_dump(data))
    result = train("submit", "--config", str(bigger), "--from-sweep", name, "--dry-run", "--out",
                   str(tmp_path / "jobs"))
    assert result.exit_code == 2 and "tuned with 1 processes per arm, this pair runs 8" in (
        result.output), result.output


def test_tuning_on_the_experiment_arm_is_a_warning(train, fake):
    result = train("sweep", "--config", str(CONFIG), "--arm", "experiment")
    assert result.exit_code == 0 and "tuning on the experiment arm" in result.output


def test_from_sweep_without_a_best_trial_is_exit_2(train, fake):
    assert train("sweep", "--config", str(CONFIG)).exit_code == 0
    name = next(iter(fake.jobs))
    result = train("submit", "--config", str(CONFIG), "--from-sweep", name)
    assert result.exit_code == 2 and "no best trial yet" in result.output
    missing = train("submit", "--config", str(CONFIG), "--from-sweep", "nope")
    assert missing.exit_code == 2 and "no such job" in missing.output
    assert len(fake.sent("PUT")) == 1


def test_from_sweep_refuses_what_it_cannot_trust(train, fake, tmp_path):
    name = _finished_sweep(fake, train)
    other = with_sweep(tmp_path)
    data = yaml.safe_load(other.read_text())
    data["training"]["weight_decay"] = 0.5  # another experiment
    other.write_text(yaml.safe_dump(data))
    result = train("submit", "--config", str(other), "--from-sweep", name)
    assert result.exit_code == 2 and "another experiment file" in result.output
    assert train("submit", "--config", str(CONFIG), "--from-sweep", "").exit_code == 2
    fake.jobs[f"{name}_3"]["properties"]["inputs"].pop("lora_r")
    lacking = train("submit", "--config", str(CONFIG), "--from-sweep", name)
    assert lacking.exit_code == 2 and "no value for lora.r" in lacking.output
    fake.jobs[name]["properties"]["status"] = "Failed"
    failed = train("submit", "--config", str(CONFIG), "--from-sweep", name)
    assert failed.exit_code == 2 and "Failed, not Completed" in failed.output
    assert len(fake.sent("PUT")) == 1  # the sweep only


def test_a_changed_or_failed_sweep_is_not_reused_and_force_makes_a_new_one(train, fake, tmp_path):
    assert train("sweep", "--config", str(CONFIG)).exit_code == 0
    (name,) = fake.jobs
    edited = with_sweep(tmp_path, max_total_trials=40)  # only `sweep:` changed: same pair id
    result = train("sweep", "--config", str(edited))
    assert result.exit_code == 2 and "exists with another search" in result.output, result.output
    assert "--force" in result.output and len(fake.sent("PUT", "/jobs/")) == 1
    tags = fake.jobs[name]["properties"]["tags"]
    for key, value in {"compute": "old-cluster", "environment": "azureml:train-env:1"}.items():
        now, tags[key] = tags[key], value  # as if the stack's cluster or image changed since
        moved = train("sweep", "--config", str(CONFIG))
        assert moved.exit_code == 2, moved.output
        assert f"ran with another setup: {key} {value!r} (now {now!r})" in moved.output
        tags[key] = now
    tags["code_version"] = "an-older-snapshot"  # an edit of the code: the search still holds
    assert train("sweep", "--config", str(CONFIG)).exit_code == 0
    fake.set_status(name, "Failed")
    failed = train("sweep", "--config", str(CONFIG))
    assert failed.exit_code == 1 and f"sweep {name} ended Failed" in failed.output
    forced = train("sweep", "--config", str(edited), "--force")
    assert forced.exit_code == 0, forced.output
    (new,) = set(fake.jobs) - {name}
    assert new.startswith(f"{name}-") and len(new) == len(name) + 15
    assert fake.jobs[new]["properties"]["limits"]["maxTotalTrials"] == 40


def test_two_forced_sweeps_in_the_same_second_are_two_sweeps(train, fake, monkeypatch):
    import time

    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)  # the clock stands still
    for _ in range(2):
        result = train("sweep", "--config", str(CONFIG), "--force")
        assert result.exit_code == 0 and "submitted on the control arm" in result.output, \
            result.output
    assert len(fake.jobs) == 2


def test_a_sweep_over_budget_is_refused_before_any_request(train, fake, tmp_path):
    costly = with_sweep(tmp_path, max_total_trials=1000, max_concurrent_trials=100,
                        timeout_minutes=43200)
    result = train("sweep", "--config", str(costly))
    assert result.exit_code == 1, result.output
    assert "the sweep's worst case 36,700.00 USD exceeds budget_usd 200.00" in result.output
    assert not fake.sent("PUT")
    allowed = train("sweep", "--config", str(costly), "--allow-over-budget")
    assert allowed.exit_code == 0 and "submitted anyway" in allowed.output, allowed.output
    unbounded = with_sweep(tmp_path, timeout_minutes=None)
    data = yaml.safe_load(unbounded.read_text())
    data["azure"]["max_run_minutes"] = None
    unbounded.write_text(yaml.safe_dump(data))
    result = train("sweep", "--config", str(unbounded), "--force")  # a new sweep: priced
    assert result.exit_code == 1 and "nothing bounds the sweep" in result.output


def test_an_older_sweep_an_existing_sweep_over_budget_and_a_sweep_name_as_a_pair(train, fake,
                                                                                   tmp_path):
    assert train("sweep", "--config", str(CONFIG)).exit_code == 0
    (name,) = fake.jobs
    poorer = with_sweep(tmp_path)
    data = yaml.safe_load(poorer.read_text())
    data["budget_usd"] = 1.0
    poorer.write_text(yaml.safe_dump(data))
    again = train("sweep", "--config", str(poorer))  # it exists: reported, not priced again
    assert again.exit_code == 0 and "exists already" in again.output, again.output
    fake.jobs[name]["properties"]["tags"].pop("sweep_sha256")  # as an older version made it
    older = train("sweep", "--config", str(CONFIG))
    assert older.exit_code == 2 and "made by an older version" in older.output
    for command in ("logs", "register"):
        result = train(command, name)
        assert result.exit_code == 2 and "is a sweep's job, not a pair" in result.output


def test_a_sweep_is_shown_and_cancelled_by_its_job_name(train, fake):
    assert train("sweep", "--config", str(CONFIG)).exit_code == 0
    (name,) = fake.jobs
    shown = train("status", name)
    assert shown.exit_code == 0 and name in shown.output, shown.output
    cancelled = train("cancel", name)
    assert cancelled.exit_code == 0 and f"{name}: cancel requested" in cancelled.output
    assert fake.jobs[name]["properties"]["status"] == "Canceled"
    missing = train("cancel", "nope-sweep-control")
    assert missing.exit_code == 2 and "no sweep 'nope-sweep-control'" in missing.output


def test_a_search_over_epochs_is_priced_at_its_dearest_trial(train, fake, tmp_path):
    import re

    def expected(epochs_values, path):
        space = {"training.learning_rate": {"type": "choice", "values": [1e-4, 2e-4]},
                 "training.epochs": {"type": "choice", "values": epochs_values}}
        cfg = with_sweep(path, search_space=space)
        from tests.training.plan.test_estimate import with_example_data

        # data on this machine: an estimate, not a bound
        cfg.write_text(yaml.safe_dump(with_example_data(yaml.safe_load(cfg.read_text()))))
        result = train("sweep", "--config", str(cfg), "--allow-over-budget", "--force")
        assert result.exit_code == 0, result.output
        return float(re.search(r"expected ([\d,.]+) USD", result.output)[1].replace(",", ""))

    for name in "abc":
        (tmp_path / name).mkdir()
    one, three = expected([1], tmp_path / "a"), expected([3], tmp_path / "b")
    up_to_nine = expected([1, 9, 3], tmp_path / "c")
    # the file says 3 epochs; the sweep may train 9: every trial is priced at 9 (the cost is
    # startup + epochs x one epoch's)
    assert up_to_nine > three > one
    assert up_to_nine - one == pytest.approx(4 * (three - one), abs=0.05)


def test_the_costliest_trial_takes_each_cost_fields_largest_value():
    from training.azureml.sweep import costliest_trial

    data = yaml.safe_load(CONFIG.read_text())
    data["sweep"]["search_space"] = {
        "training.per_device_batch_size": {"type": "choice", "values": [2, 8, 4]},
        "training.gradient_accumulation_steps": {"type": "quniform", "min_value": 1,
                                                 "max_value": 7, "q": 2},
        "training.gradient_checkpointing": {"type": "choice", "values": [False, True]},
        "training.learning_rate": {"type": "uniform", "min_value": 1e-5, "max_value": 1e-3}}
    cfg = parse_config(data, base_dir=REPO / "experiments")
    dearest = costliest_trial(cfg)
    assert dearest.training.per_device_batch_size == 8
    assert dearest.training.gradient_accumulation_steps == 8  # round(7 / 2) * 2
    assert dearest.training.gradient_checkpointing is True
    assert dearest.training.learning_rate == cfg.training.learning_rate  # not a cost field


@pytest.mark.parametrize("space, shown", [
    ({"training.per_device_batch_size": {"type": "choice", "values": [4, 64]}},
     "training.per_device_batch_size 64"),
    ({"training.gradient_checkpointing": {"type": "choice", "values": [True, False]}},
     "training.gradient_checkpointing False"),
])
def test_a_searched_value_that_cannot_fit_the_gpu_is_refused_before_any_request(
        train, fake, tmp_path, space, shown):
    data = yaml.safe_load(with_sweep(tmp_path, search_space=space).read_text())
    data["training"]["gradient_checkpointing"] = True  # the file's own values fit
    path = tmp_path / "hungry.yaml"
    path.write_text(yaml.safe_dump(data))
    result = train("sweep", "--config", str(path))
    assert result.exit_code == 2, result.output
    assert f"the sweep's hungriest trial ({shown}) does not fit" in result.output
    assert fake.requests == []


def test_a_dearest_trial_that_outlasts_max_run_minutes_is_said(train, fake, tmp_path):
    from tests.training.plan.test_estimate import with_example_data

    space = {"training.learning_rate": {"type": "choice", "values": [1e-4, 2e-4]}}
    cfg = with_sweep(tmp_path, search_space=space)
    data = with_example_data(yaml.safe_load(cfg.read_text()))
    data["training"]["max_steps"] = 20000
    data["azure"]["max_run_minutes"] = 60
    cfg.write_text(yaml.safe_dump(data))
    result = train("sweep", "--config", str(cfg), "--allow-over-budget")
    assert result.exit_code == 0, result.output
    assert "warning: the dearest trial, the estimated" in result.output
    assert "exceed azure.max_run_minutes 60 (1.00 h)" in result.output
