import pytest

from training.experiment.config import parse_config
from training.plan.preflight import (
    hardware_problems,
    module_names,
    problems,
    rows_problems,
    target_module_problems,
)


def cfg_with(**over):
    data = {"name": "p", "base_model": "tiny-llama", "method": "lora",
            "training": {"max_steps": 2},
            "arms": {"control": {"train": "c.jsonl"}, "experiment": {"train": "e.jsonl"}}}
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[key] = value
    return parse_config(data)


@pytest.mark.parametrize(
    ("over", "cuda", "bf16", "expected"),
    [
        ({"training__precision": "fp16"}, False, False, "training.precision: fp16 needs a CUDA GPU"),
        ({"training__precision": "bf16"}, True, False, "training.precision: this GPU has no bf16"),
        ({"method": "qlora"}, False, False, "method: qlora needs a CUDA GPU"),
        ({"training__precision": "fp16"}, True, False, None),
        ({"training__precision": "auto"}, False, False, None),
        ({"training__precision": "bf16"}, True, True, None),
    ],
)
def test_precision_and_method_against_the_hardware(over, cuda, bf16, expected):
    found = hardware_problems(cfg_with(**over), cuda=cuda, bf16=bf16)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(expected)


MODULES = {"model.layers.0.self_attn.q_proj": "Linear", "model.layers.0.self_attn": "Attention",
           "model.layers.0.mlp": "LlamaMLP", "model.layers.0.mlp.up_proj": "Linear",
           "model.embed_tokens": "Embedding", "lm_head": "Linear"}


def test_target_modules_are_checked_against_module_names():
    assert target_module_problems(["q_proj", "self_attn.q_proj", "up_proj"], MODULES, "m") == []
    assert target_module_problems("all-linear", MODULES, "m") == []
    missing, wrong = target_module_problems(["q_projj", "mlp"], MODULES, "m")
    assert missing.startswith("lora.target_modules: 'q_projj' is not a module of m (its "
                              "adaptable layers: q_proj, up_proj, embed_tokens, lm_head)")
    assert wrong.startswith("lora.target_modules: 'mlp' names a LlamaMLP in m, not a layer")
    assert target_module_problems(["proj"], MODULES, "m")[0].startswith(
        "lora.target_modules: 'proj' is not a module")  # peft matches whole dotted parts


def test_module_names_come_from_a_meta_instance_of_the_real_model(tiny_model_path):
    names = module_names(tiny_model_path, None)
    assert names["model.layers.0.self_attn.q_proj"] == "Linear"
    assert names["model.layers.3.mlp"] == "LlamaMLP"


def test_problems_for_the_tiny_model(tiny_model_path):
    cfg = cfg_with(lora__target_modules=["q_proj", "nope"], training__precision="fp16")
    found = problems(cfg, tiny_model_path, None)
    assert any(p.startswith("training.precision: fp16 needs a CUDA GPU") for p in found)
    assert any("'nope' is not a module of tiny-llama" in p for p in found)
    assert problems(cfg_with(lora__target_modules=["q_proj", "v_proj"]), tiny_model_path,
                    None) == []


def test_an_arm_too_small_for_its_holdout():
    cfg = cfg_with()
    assert rows_problems(cfg, {"control": 1, "experiment": 30}) == [
        "arms.control.train: 1 row(s) leave nothing to train on after the eval holdout: add rows "
        "or give a shared eval set (eval:)"]
    shared = cfg_with(eval="eval.jsonl")
    assert rows_problems(shared, {"control": 1, "experiment": 1, "eval": 1}) == []
