"""The memory plan against figures computed by hand from the formulas in training/memory.py's
docstring, the `auto` sharding choice, the cheapest fixes, and the model shapes."""

import json

import pytest
from click.testing import CliRunner

from tests.training.pairs import write_experiment
from training.experiment.config import parse_config
from training.plan import memory
from training.plan.hardware import vm_size
from training.plan.memory import GIB, LINEARS, Setup, model_shape, plan

L3_8B, L3_70B = "meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-70B"
OVERHEAD = 1.5 * GIB  # + 10% of the rest
NF4 = 4.127 / 8


def test_built_in_shapes_match_the_published_parameter_counts():
    assert model_shape(L3_8B).n_params == 8_030_261_248
    assert model_shape(L3_70B).n_params == 70_553_706_496
    assert model_shape("meta-llama/Llama-3.2-1B-Instruct").n_params == 1_235_814_400
    assert model_shape("meta-llama/Llama-3.2-3B").n_params == 3_212_749_824
    assert model_shape("meta-llama/Llama-3.3-70B-Instruct").n_params == 70_553_706_496
    assert model_shape("meta-llama/Llama-3.1-405B").n_params == 405_853_388_800
    assert model_shape("mistralai/Mistral-7B-v0.1").n_params == 7_241_732_096
    assert memory.lora_params(model_shape(L3_8B), 16, LINEARS) == 41_943_040


def test_8b_full_by_hand():
    # 8B full fine-tuning, bf16, one A100 80GB, batch 1 x 2048 tokens, gradient checkpointing
    P = 8_030_261_248
    states = 4 * P + 4 * P + 8 * P  # fp32 weights, fp32 gradients, AdamW's two fp32 moments
    a = 6 * 4096 + 3 * 4096 + 3 * 1024 + 4 * 14336  # per token and layer: 97,280 elements
    act = 2048 * ((32 * 4096 + a) * 2 + 128256 * (2 + 8))  # layer inputs + one layer + logits
    total = states + act + OVERHEAD + 0.1 * (states + act)
    p = plan(model_shape(L3_8B), Setup("full", "bf16", "none", 1, 2048, 1, True), 80)
    assert p.parts["weights"] == 4 * P and p.parts["optimizer"] == 8 * P
    assert p.parts["activations"] == act == 3_562_012_672
    assert p.total == pytest.approx(total, rel=1e-12)
    assert round(p.total_gib, 1) == 136.8 and not p.fits  # the "~130 GB" and then some

    # FSDP over 8 GPUs: the states / 8, plus the gathered root and 3 layers (params + grads)
    root, layer = 2 * 128256 * 4096 + 4096, 218_112_000
    sharded = states / 8 + 2 * (2 * root + 3 * layer) + act
    p8 = plan(model_shape(L3_8B), Setup("full", "bf16", "fsdp", 8, 2048, 1, True), 80)
    assert p8.total == pytest.approx(sharded + OVERHEAD + 0.1 * sharded, rel=1e-12)
    assert round(p8.total_gib, 2) == 27.25 and p8.fits


def test_8b_lora_by_hand():
    # the production example: LoRA r=16 on all linear layers, batch 4 x 2048, checkpointing
    P, A = 8_030_261_248, 32 * 16 * (9 * 4096 + 2 * 1024 + 3 * 14336)
    a = 97_280 + 5 * 4096 + 4096 + 14336 + 7 * 16  # + the LoRA layers' dropped-out inputs
    act = 4 * 2048 * ((32 * 4096 + a) * 2 + 128256 * 10)
    rest = 2 * P + 4 * A + 4 * A + 8 * A + act
    p = plan(model_shape(L3_8B), Setup("lora", "bf16", "none", 1, 2048, 4, True), 80)
    assert p.trainable == A == 41_943_040
    assert p.total == pytest.approx(rest + OVERHEAD + 0.1 * rest, rel=1e-12)
    assert round(p.total_gib, 1) == 33.9 and p.fits
    # without checkpointing the activations alone need 76 GiB: it does not fit
    assert round(p.activations_other / GIB, 1) == 76.3
    assert not plan(model_shape(L3_8B), Setup("lora", "bf16", "none", 1, 2048, 4, False), 80).fits


def test_70b_lora_by_hand():
    P, A = 70_553_706_496, 80 * 16 * (9 * 8192 + 2 * 1024 + 3 * 28672)
    layer = 2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192
    root = 2 * 128256 * 8192 + 8192
    a = 6 * 8192 + 3 * 8192 + 3 * 1024 + 4 * 28672 + 6 * 8192 + 28672 + 7 * 16
    act = 2048 * ((80 * 8192 + a) * 2 + 128256 * 10)
    # one GPU: the bf16 weights alone are 131 GiB
    one = plan(model_shape(L3_70B), Setup("lora", "bf16", "none", 1, 2048, 1, True), 80)
    assert one.parts["weights"] / GIB > 131 and not one.fits
    # FSDP over 4 A100 80GB: states / 4, plus the gathered root and two layers in bf16
    rest = (2 * P + 16 * A) / 4 + 2 * (root + 2 * layer) + act
    p = plan(model_shape(L3_70B), Setup("lora", "bf16", "fsdp", 4, 2048, 1, True), 80)
    assert p.total == pytest.approx(rest + OVERHEAD + 0.1 * rest, rel=1e-12)
    assert round(p.total_gib, 1) == 52.9 and p.fits


def test_70b_qlora_by_hand():
    A = 207_093_760
    linear = 80 * (2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672)
    other = 70_553_706_496 - linear  # embeddings, lm_head, norms: fp32 after kbit preparation
    a = 6 * 8192 + 3 * 8192 + 3 * 1024 + 4 * 28672 + 6 * 8192 + 28672 + 7 * 16
    act = 2048 * ((80 * 8192 + a) * 2 + 128256 * 10)
    rest = NF4 * linear + 4 * other + 16 * A + act
    p = plan(model_shape(L3_70B), Setup("qlora", "bf16", "none", 1, 2048, 1, True), 80)
    assert p.total == pytest.approx(rest + OVERHEAD + 0.1 * rest, rel=1e-12)
    assert round(p.total_gib, 1) == 56.3 and p.fits  # one A100 80GB


def experiment(method="lora", model=L3_8B, batch=4, gc=True, sharding="auto", **azure):
    return parse_config({
        "name": "m", "base_model": model, "method": method,
        "training": {"max_steps": 10, "per_device_batch_size": batch, "max_seq_length": 2048,
                     "gradient_checkpointing": gc, "sharding": sharding},
        "arms": {"control": {"train": "c.jsonl"}, "experiment": {"train": "e.jsonl"}},
        "azure": azure})


def test_auto_is_ddp_when_the_model_fits_and_fsdp_when_it_does_not():
    s8, s70 = model_shape(L3_8B), model_shape(L3_70B)
    one, four = vm_size("Standard_NC24ads_A100_v4"), vm_size("Standard_NC96ads_A100_v4")
    check = memory.check_vm(experiment(), one, s8)
    assert check.sharding == "none" and check.fits and "auto -> none" in check.message()
    check = memory.check_vm(experiment(processes_per_node=4), four, s8)
    assert check.sharding == "none"  # DDP: it fits one GPU
    check = memory.check_vm(experiment(model=L3_70B, batch=1, processes_per_node=4), four, s70)
    assert check.sharding == "fsdp" and check.fits
    check = memory.check_vm(experiment(method="full", processes_per_node=8),
                            vm_size("Standard_ND96amsr_A100_v4"), s8)
    assert check.sharding == "fsdp" and check.fits
    # asked for explicitly: kept, even where it does not fit
    check = memory.check_vm(experiment(model=L3_70B, batch=1, sharding="none",
                                       processes_per_node=4), four, s70)
    assert check.sharding == "none" and not check.fits
    # a CPU VM cannot run the Trainer's FSDP
    assert memory.check_vm(experiment(method="full"), vm_size("Standard_D16s_v3"),
                           s8).sharding == "none"


def test_70b_lora_on_one_gpu_names_the_cheapest_changes_that_fit():
    check = memory.check_vm(experiment(model=L3_70B, batch=1), vm_size("Standard_NC24ads_A100_v4"),
                            model_shape(L3_70B))
    assert not check.fits
    text = check.message()
    assert "does NOT fit" in text and "weights" in text and "of 80 GiB (A100 80GB)" in text
    config_fix, hardware_fix, method_fix = check.fixes
    assert "training.cpu_offload: true" in config_fix  # the only change of the file alone
    assert "x 2 node" not in hardware_fix and "sharding fsdp over" in hardware_fix
    assert method_fix.startswith("method: qlora") and "Standard_NC24ads_A100_v4 x 1" in method_fix


def test_8b_full_on_one_gpu_suggests_a_bigger_vm_with_fsdp_or_lora():
    check = memory.check_vm(experiment(method="full", gc=False), vm_size(
        "Standard_NC24ads_A100_v4"), model_shape(L3_8B))
    assert not check.fits
    hardware = [f for f in check.fixes if "USD/h" in f]
    # by price per arm hour: 2 x H100 NVL 94GB (13.96 USD/h) before 4 x A100 80GB (14.69)
    assert hardware[0].startswith("Standard_NC80adis_H100_v5 x 1 node")
    assert "sharding fsdp over 2 GPUs, gradient_checkpointing: true" in hardware[0]
    assert hardware[1].startswith("method: lora") and "Standard_NC24ads_A100_v4" in hardware[1]


def test_batch_and_checkpointing_come_before_hardware():
    check = memory.check_vm(experiment(gc=False), vm_size("Standard_NC24ads_A100_v4"),
                            model_shape(L3_8B))
    assert not check.fits
    assert check.fixes[0].startswith("training.gradient_checkpointing: true ->")


def test_shape_from_a_folder_the_cache_and_unknown(tmp_path, hub_cache):
    from huggingface_hub import constants

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "vocab_size": 100, "tie_word_embeddings": True}))
    shape = model_shape(str(folder))
    assert (shape.n_kv_heads, shape.n_params) == (4, 2 * (4 * 64 * 64 + 3 * 64 * 128 + 128)
                                                  + 100 * 64 + 64)
    # the cached snapshot's config.json is "{}": the built-in table answers
    assert model_shape(L3_8B, hub_cache).source == "built-in table"
    snapshot = (tmp_path / "hf-cache" / "models--meta-llama--Meta-Llama-3-8B" / "snapshots"
                / hub_cache)
    assert str(snapshot).startswith(constants.HF_HUB_CACHE)
    (snapshot / "config.json").write_text((folder / "config.json").read_text())
    assert model_shape(L3_8B, hub_cache).n_layers == 2  # the cached file wins
    with pytest.raises(memory.ShapeUnknown, match=r"hf download someone/else config\.json"):
        model_shape("someone/else")
    assert model_shape("tiny-llama").n_layers == 4


def test_train_run_exits_2_with_the_plan_when_an_arm_cannot_fit(tmp_path, tiny_model_path):
    from training.cli import main

    cfg = write_experiment(tmp_path, azure={"gpu_memory_gib": 0.01})
    result = CliRunner().invoke(main, ["run", "--config", str(cfg), "--output-dir",
                                       str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert "does not fit" in result.output
    assert "of 0.005 GiB (CPU RAM, shared by 2 arms)" in result.output  # 0.01 GiB per machine
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_70b_example_fits_its_vm_sharded():
    from tests.training.pairs import REPO
    from training.experiment.config import load_config
    from training.plan.estimate import pick_vm

    cfg = load_config(REPO / "experiments" / "llama3-70b.yaml")
    vm, _source = pick_vm(cfg, None, None, "gpu")
    check = memory.check_vm(cfg, vm, model_shape(cfg.base_model))
    assert (vm.name, check.plan.setup.gpus, check.sharding) == ("Standard_NC96ads_A100_v4", 4,
                                                                 "fsdp")
    assert check.fits and round(check.plan.total_gib, 1) == 59.4
    auto = cfg.model_copy(update={"training": cfg.training.model_copy(
        update={"sharding": "auto"})})
    assert memory.check_vm(auto, vm, model_shape(cfg.base_model)).sharding == "fsdp"


def test_data_validate_config_plans_as_train_run_does(tmp_path, tiny_model_path):
    from training.cli import main

    cfg = write_experiment(tmp_path, azure={"gpu_memory_gib": 0.01})
    result = CliRunner().invoke(main, ["data", "validate", "--config", str(cfg)])
    assert result.exit_code == 2 and "does NOT fit" in result.output, result.output
    cfg = write_experiment(tmp_path)
    assert CliRunner().invoke(main, ["data", "validate", "--config", str(cfg)]).exit_code == 0


def test_check_as_json():
    check = memory.check_vm(experiment(), vm_size("Standard_NC24ads_A100_v4"), model_shape(L3_8B))
    data = json.loads(json.dumps(check.to_dict()))
    assert data["fits"] and data["sharding"] == "none" and data["total_gib"] == 33.89
    assert set(data["parts_gib"]) == {"weights", "gradients", "optimizer", "activations",
                                      "overhead"}


def test_a_parameter_count_reads_at_its_own_scale():
    from training.plan.model_shape import params_text

    assert params_text(8_030_261_248) == "8.03B"
    assert params_text(1_234_567) == "1.23M"  # the tiny model is not "0.00B"
    assert params_text(912) == "912"
