"""Time and cost before submitting: the formulas against hand-computed cases, and the guard."""

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from training.experiment.config import parse_config
from training.plan.estimate import (
    DataTokens,
    estimate_pair,
    flops_per_token,
    pick_vm,
    tokens_trained,
)
from training.plan.hardware import vm_size

REPO = Path(__file__).resolve().parents[3]
N_8B = 8_030_261_248  # Meta-Llama-3-8B


def cfg(**training):
    data = yaml.safe_load((REPO / "experiments" / "paired-comments.yaml").read_text())
    data["training"].update({"epochs": None, "max_steps": 1000, "eval_every": 100,
                             "per_device_batch_size": 4, "gradient_accumulation_steps": 4,
                             **training})
    return parse_config(data, "test", REPO / "experiments")


def test_flops_per_token_by_method():
    assert flops_per_token("full", N_8B, False)[0] == 6 * N_8B
    assert flops_per_token("lora", N_8B, False)[0] == 4 * N_8B
    assert flops_per_token("qlora", N_8B, True)[0] == 6 * N_8B
    assert "gradient checkpointing" in flops_per_token("lora", N_8B, True)[1]


def test_8b_lora_at_2048_tokens_by_hand():
    c = cfg()  # LoRA, gradient checkpointing on, max_steps 1000, 4 x 4 examples per step
    data = {arm: DataTokens(rows=16_000, tokens=16_000 * 2048) for arm in ("control", "experiment")}
    vm = vm_size("Standard_NC24ads_A100_v4")
    est = estimate_pair(c, vm=vm, vm_source="test", n_params=N_8B, data=data,
                        eval_tokens=100 * 2048, token_source="test", mfu=0.35)
    arm = est.arms[0]
    tokens = 1000 * 16 * 2048
    assert arm.tokens_trained == tokens == 32_768_000
    assert arm.train_flops == pytest.approx(6 * N_8B * tokens)  # 4NT + 2NT (checkpointing)
    assert arm.eval_flops == pytest.approx(2 * N_8B * 100 * 2048 * 11)  # 10 evals + the last
    seconds = (arm.train_flops + arm.eval_flops) / (312e12 * 0.35)
    assert arm.hours == pytest.approx(seconds / 3600 + 10 / 60)
    assert arm.cost_usd == pytest.approx(arm.hours * 3.67)
    assert est.cost_usd == pytest.approx(2 * arm.cost_usd)
    assert est.worst_case_usd == pytest.approx(600 / 60 * 3.67 * 2)  # max_run_minutes 600
    assert est.over_budget == []  # budget_usd 200


def test_epochs_replicates_holdout_and_budget():
    c = parse_config({**cfg().model_dump(mode="json"), "eval": None,
                      "training": {**cfg().training.model_dump(mode="json"), "max_steps": None,
                                   "epochs": 2, "replicates": 3},
                      "budget_usd": 1.0}, "t")
    data = {"control": DataTokens(1000, 1_000_000), "experiment": DataTokens(2000, 1_000_000)}
    est = estimate_pair(c, vm=vm_size("Standard_NC24ads_A100_v4"), vm_source="t", n_params=N_8B,
                        data=data, eval_tokens=None, token_source="t")
    assert est.arms[0].tokens_trained == round(2 * 1_000_000 * 0.9)  # the 10% holdout
    assert est.arms[0].optimizer_steps == 2 * 900 // 16 + 1  # ceil(1800 / 16)
    assert est.cost_usd == pytest.approx(3 * sum(a.cost_usd for a in est.arms))
    assert est.worst_case_usd == pytest.approx(10 * 3.67 * 2 * 3)
    assert len(est.over_budget) == 2


def test_tokens_with_max_steps_follow_the_data_mean():
    c = cfg(max_steps=10, per_device_batch_size=2, gradient_accumulation_steps=1)
    assert tokens_trained(c, DataTokens(rows=4, tokens=400), world=8) == 10 * 2 * 8 * 100


def test_vm_size_sources_and_overrides():
    c = cfg()
    assert pick_vm(c, "Standard_ND96amsr_A100_v4", None, "gpu")[1] == "stack outputs"
    vm, source = pick_vm(c, None, None, "gpu")
    assert vm.name == "Standard_NC24ads_A100_v4" and "default" in source
    assert pick_vm(c, None, "Standard_D4s_v3", "cpu")[0].price_per_hour == 0.192
    with pytest.raises(ValueError, match=r"azure\.price_per_hour"):
        pick_vm(c, "Standard_XYZ_v9", None, "gpu")
    custom = parse_config({**c.model_dump(mode="json"), "azure": {
        "vm_size": "Standard_XYZ_v9", "price_per_hour": 9.5, "gpu_peak_tflops": 500,
        "gpu_memory_gib": 141}}, "t")
    vm, source = pick_vm(custom, None, None, "gpu")
    assert (vm.price_per_hour, vm.accelerator.peak_tflops, source) == (9.5, 500, "azure.vm_size")


def with_example_data(data: dict) -> dict:
    """An experiment file's data, as absolute paths to examples/data (here on this machine)."""
    for arm in ("control", "experiment"):
        data["arms"][arm]["train"] = str(REPO / "examples" / "data" / f"{arm}.jsonl")
    data["eval"] = str(REPO / "examples" / "data" / "eval.jsonl")
    return data


def _run(args, fake=None):
    from tests.training.fake_azure import FakeCredential
    from training.cli import main

    obj = {"azure_transport": fake, "azure_credential": FakeCredential()} if fake else None
    return CliRunner().invoke(main, args, obj=obj)


@pytest.mark.parametrize("fmt", ["json", "table"])
def test_estimate_command_on_the_local_pair(tiny_model_path, fmt):
    result = _run(["estimate", "--config", str(REPO / "experiments" / "local.yaml"),
                   "--format", fmt])
    assert result.exit_code == 0, result.output
    if fmt == "json":
        data = json.loads(result.output)
        assert data["vm_size"] == "Standard_D4s_v3"  # azure.compute: cpu
        assert data["token_source"].startswith("counted with the tiny-llama tokenizer")
        assert data["arms"][0]["optimizer_steps"] == 150
        assert data["worst_case_usd"] == pytest.approx(60 / 60 * 0.192 * 2)
        plan = data["memory_plan"]  # numbers, not lines of text
        assert data["fits"] is True and plan["fits"] is True
        assert isinstance(plan["total_gib"], float) and 0 < plan["total_gib"] < plan["memory_gib"]
        assert set(plan["parts_gib"]) >= {"weights", "activations"}
    else:
        assert "worst case" in result.output and "FLOPs" in result.output
        assert "memory per GPU" in result.output and ": fits" in result.output


def test_estimate_rejects_what_cannot_run(tmp_path, tiny_model_path):
    data = yaml.safe_load((REPO / "experiments" / "local.yaml").read_text())
    data["azure"] = {"compute": "gpu", "processes_per_node": 8}
    with_example_data(data)
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(data))
    result = _run(["estimate", "--config", str(path)])
    assert result.exit_code == 2 and "1 GPU(s) per node" in result.output


def test_submit_refuses_a_pair_over_budget(tmp_path, hub_cache):
    from tests.training.fake_azure import OUTPUTS, FakeAzureML

    data = yaml.safe_load((REPO / "experiments" / "paired-comments.yaml").read_text())
    data["budget_usd"] = 50  # the worst case is 600 min x 3.67 USD x 2 = 73.40
    path = tmp_path / "pair.yaml"
    path.write_text(yaml.safe_dump(data))
    outputs = tmp_path / "out.json"
    outputs.write_text(json.dumps(OUTPUTS))
    args = ["submit", "--config", str(path), "--outputs-file", str(outputs)]
    fake = FakeAzureML()
    refused = _run(args, fake)
    assert refused.exit_code == 1, refused.output
    assert "73.40" in refused.output and "--allow-over-budget" in refused.output
    assert not fake.sent("PUT")  # looked the jobs up, created nothing
    allowed = _run([*args, "--allow-over-budget"], fake)
    assert allowed.exit_code == 0, allowed.output
    assert len(fake.sent("PUT")) == 2
    # the pair exists: submitting it again reports it, whatever the budget says now
    again = _run(args, fake)
    assert again.exit_code == 0 and "already submitted, nothing created" in again.output, \
        again.output
    assert len(fake.sent("PUT")) == 2


def test_hosted_backend_is_priced_from_billed_tokens():
    result = _run(["estimate", "--config", str(REPO / "experiments" / "hosted-openai.yaml"),
                   "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    arm = data["arms"]["control"]
    assert arm["billed_tokens"] == arm["tokens_per_epoch"] * arm["n_epochs"]
    assert arm["usd"] == pytest.approx(arm["billed_tokens"] / 1e6 * arm["usd_per_million"],
                                       abs=1e-4)
    assert data["cost_usd"] == pytest.approx(arm["usd"] + data["arms"]["experiment"]["usd"])


def test_an_azure_openai_estimate_says_its_prices_are_openais(tmp_path):
    data = yaml.safe_load((REPO / "experiments" / "hosted-openai.yaml").read_text())
    data["backend"] = "azure-openai"
    with_example_data(data)
    path = tmp_path / "azure-openai.yaml"
    path.write_text(yaml.safe_dump(data))
    table = _run(["estimate", "--config", str(path)])
    assert table.exit_code == 0, table.output
    assert "OpenAI's list prices: Azure OpenAI's depend on the region" in table.output
    data = json.loads(_run(["estimate", "--config", str(path), "--format", "json"]).output)
    assert "deployment" in data["prices"] and data["backend"] == "azure-openai"


@pytest.mark.parametrize("content, message", [
    ("not json\n", "not valid JSON"), ("", "no examples"), ("\n\n", "no examples"),
])
def test_estimate_of_broken_data_is_exit_2(tmp_path, tiny_model_path, content, message):
    data = yaml.safe_load((REPO / "experiments" / "local.yaml").read_text())
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    data["arms"]["control"]["train"] = str(bad)
    for arm in ("experiment",):
        data["arms"][arm]["train"] = str(REPO / "examples" / "data" / f"{arm}.jsonl")
    data["eval"] = str(REPO / "examples" / "data" / "eval.jsonl")
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(data))
    result = _run(["estimate", "--config", str(path)])
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize("mfu", ["nan", "inf", "0", "1.5"])
def test_mfu_must_be_a_fraction(mfu):
    result = _run(["estimate", "--config", str(REPO / "experiments" / "local.yaml"),
                   "--mfu", mfu])
    assert result.exit_code == 2 and "--mfu" in result.output


def test_an_arm_estimated_to_outlast_max_run_minutes_is_said(tmp_path, hub_cache):
    from tests.training.fake_azure import OUTPUTS, FakeAzureML

    data = yaml.safe_load((REPO / "experiments" / "paired-comments.yaml").read_text())
    with_example_data(data)
    data["training"]["max_steps"] = 20000
    data["azure"]["max_run_minutes"] = 60
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(data))
    table = _run(["estimate", "--config", str(path)])
    assert table.exit_code == 0, table.output
    assert "warning: control: the estimated" in table.output
    assert "exceed azure.max_run_minutes 60 (1.00 h): the job would be stopped" in table.output
    est = json.loads(_run(["estimate", "--config", str(path), "--format", "json"]).output)
    assert [t.split(":")[0] for t in est["timeouts"]] == ["control", "experiment"]
    assert all(a["hours"] > 1 for a in est["arms"])
    data["azure"]["max_run_minutes"] = 43200  # room enough: nothing said
    path.write_text(yaml.safe_dump(data))
    assert json.loads(_run(["estimate", "--config", str(path), "--format", "json"]).output)[
        "timeouts"] == []
    outputs = tmp_path / "out.json"
    outputs.write_text(json.dumps(OUTPUTS))
    data["azure"]["max_run_minutes"] = 60
    path.write_text(yaml.safe_dump(data))
    submitted = _run(["submit", "--config", str(path), "--outputs-file", str(outputs)],
                     FakeAzureML())
    assert "the job would be stopped before it finishes" in submitted.output, submitted.output


def test_a_compute_the_stack_does_not_have_is_refused_as_submit_refuses_it(tmp_path, hub_cache):
    from tests.training.fake_azure import OUTPUTS

    data = with_example_data(yaml.safe_load((REPO / "experiments" /
                                             "paired-comments.yaml").read_text()))
    data["azure"]["compute"] = "foo-cluster"
    path, outputs = tmp_path / "x.yaml", tmp_path / "out.json"
    path.write_text(yaml.safe_dump(data))
    outputs.write_text(json.dumps(OUTPUTS))
    result = _run(["estimate", "--config", str(path), "--outputs-file", str(outputs)])
    assert result.exit_code == 2, result.output
    assert "azure.compute: 'foo-cluster' is not a cluster of this stack" in result.output


def test_what_the_formulas_leave_out_is_said(tmp_path, tiny_model_path):
    data = yaml.safe_load((REPO / "experiments" / "local.yaml").read_text())
    data = with_example_data(data)
    data["training"].update({"packing": False, "long_examples": "drop"})
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(data))
    notes = json.loads(_run(["estimate", "--config", str(path), "--format", "json"]).output)[
        "notes"]
    assert [n.split(":")[0] for n in notes] == ["training.packing is off",
                                                "training.long_examples"]
    table = _run(["estimate", "--config", str(path)])
    assert "note: training.packing is off" in table.output
    data["azure"] = {"compute": "gpu", "vm_size": "Standard_NC48ads_A100_v4",
                     "processes_per_node": 1}
    path.write_text(yaml.safe_dump(data))
    table = _run(["estimate", "--config", str(path)])
    assert "has 2 GPUs per node and the arm runs 1 process(es) per node: 1 GPU(s) per node are " \
           "paid for and idle" in table.output, table.output
