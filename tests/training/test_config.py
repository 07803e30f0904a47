from pathlib import Path

import pytest
import yaml

from training.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


def base(**over) -> dict:
    cfg = {
        "name": "pair",
        "base_model": "tiny-llama",
        "method": "lora",
        "training": {"max_steps": 10},
        "arms": {"control": {"train": "c.jsonl"}, "experiment": {"train": "e.jsonl"}},
    }
    cfg.update(over)
    return cfg


def write(tmp_path, data) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("name", ["local.yaml", "paired-comments.yaml"])
def test_shipped_experiments_are_valid(name):
    cfg = load_config(REPO / "experiments" / name)
    assert cfg.arms.control.train.is_absolute()
    assert cfg.arms.control.train != cfg.arms.experiment.train


def test_production_pair_is_llama3_lora():
    cfg = load_config(REPO / "experiments" / "paired-comments.yaml")
    assert cfg.base_model == "meta-llama/Meta-Llama-3-8B"
    assert cfg.method == "lora"
    assert cfg.success.max_eval_loss == 1.0
    assert cfg.budget_usd == 200


def test_relative_paths_anchor_at_the_config_file(tmp_path):
    cfg = load_config(write(tmp_path, base(eval="data/eval.jsonl")))
    assert cfg.arms.control.train == tmp_path / "c.jsonl"
    assert cfg.eval == tmp_path / "data" / "eval.jsonl"


def test_hash_ignores_data_paths_but_not_hyperparameters(tmp_path):
    a = parse_config(base(), base_dir=tmp_path / "a")
    b = parse_config(base(), base_dir=tmp_path / "b")
    c = parse_config(base(training={"max_steps": 11}), base_dir=tmp_path / "a")
    assert a.sha256() == b.sha256()
    assert a.sha256() != c.sha256()


@pytest.mark.parametrize(
    ("override", "field", "message"),
    [
        ({"method": "prefix"}, "method", "Input should be 'lora', 'qlora' or 'full'"),
        ({"training": {"max_steps": 10, "learning_rate": -1}}, "training.learning_rate", "greater than 0"),
        ({"training": {}}, "training", "set training.max_steps or training.epochs"),
        ({"training": {"max_steps": 1, "lr": 0.1}}, "training.lr", "unknown field"),
        ({"arms": {"control": {"train": "c.jsonl"}}}, "arms.experiment", "required field missing"),
        ({"training": {"max_steps": 1, "precision": "fp8"}}, "training.precision", "Input should be"),
        ({"name": "has space"}, "name", "String should match pattern"),
        (
            {"training": {"max_steps": 9, "eval_every": 3, "save_every": 4,
                          "early_stopping": {"patience": 1}}},
            "training",
            "save_every must be a multiple of eval_every",
        ),
    ],
)
def test_bad_fields_are_named(tmp_path, override, field, message):
    path = write(tmp_path, base(**override))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert text.startswith(f"{path}: invalid experiment file")
    assert f"  {field}: " in text
    assert message in text


def test_not_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "name: x\ntraining: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: not valid YAML"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read experiment file"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
