from pathlib import Path

import pytest
import yaml

from training.experiment.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[3]


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


@pytest.mark.parametrize("edit", [
    {"success": {"max_eval_loss": 0.5, "max_train_eval_gap": 0.1}},
    {"budget_usd": 12.5},
    {"azure": {"price_per_hour": 9.0, "compute": "bigger", "max_run_minutes": 30}},
    {"openai": {"azure_endpoint": "https://x.openai.azure.com"}},
    {"backend": "openai"},
    {"name": "renamed"},
    {"sweep": {"search_space": {"training.learning_rate": {"type": "choice", "values": [1e-4]}}}},
])
def test_the_hash_ignores_what_does_not_train_the_weights(tmp_path, edit):
    """A changed verdict threshold, budget or price must find the same pair, not retrain it."""
    assert parse_config(base(**edit)).sha256() == parse_config(base()).sha256()


@pytest.mark.parametrize("edit", [
    {"training": {"max_steps": 10, "learning_rate": 1e-4}},
    {"training": {"max_steps": 10, "seed": 7}},
    {"lora": {"r": 8}},
    {"method": "full"},
    {"base_model": "meta-llama/Meta-Llama-3-8B"},
    {"base_model_revision": "abc123"},
])
def test_the_hash_follows_what_trains_the_weights(edit):
    assert parse_config(base(**edit)).sha256() != parse_config(base()).sha256()


@pytest.mark.parametrize(
    ("override", "field", "message"),
    [
        ({"method": "prefix"}, "method", "Input should be 'lora', 'qlora' or 'full'"),
        ({"training": {"max_steps": 10, "learning_rate": -1}}, "training.learning_rate", "greater than 0"),
        ({"training": {}}, "training", "set training.max_steps or training.epochs"),
        ({"training": {"max_steps": 1, "lr": 0.1}}, "training.lr", "unknown field"),
        ({"arms": {"control": {"train": "c.jsonl"}}}, "arms.experiment", "required field missing"),
        ({"training": {"max_steps": 1, "precision": "fp8"}}, "training.precision", "Input should be"),
        ({"name": "has space"}, "name", "expected 1-64 letters, digits"),
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


# ----------------------------------------------------------------------------- strict reading
@pytest.mark.parametrize(
    ("yaml_text", "field", "given"),
    [
        ("  max_steps: true\n", "training.max_steps", "got true (a boolean)"),
        ("  max_steps: yes\n", "training.max_steps", "got true (a boolean)"),
        ("  max_steps: 10.0\n", "training.max_steps", "got 10.0 (a float)"),
        ("  max_steps: 2.5\n", "training.max_steps", "got 2.5 (a float)"),
        ('  max_steps: "10"\n', "training.max_steps", "got '10' (a string)"),
        ("  max_steps: 10\n  learning_rate: '1e-4'\n", "training.learning_rate", "(a string)"),
        ("  max_steps: 10\n  learning_rate: true\n", "training.learning_rate", "(a boolean)"),
        ("  max_steps: 10\n  packing: 1\n", "training.packing", "got 1 (an integer)"),
        ("  max_steps: 10\n  seed: 7.0\n", "training.seed", "got 7.0 (a float)"),
    ],
)
def test_no_coercion_bool_float_or_string_to_number(tmp_path, yaml_text, field, given):
    text = ("name: pair\nbase_model: tiny-llama\ntraining:\n" + yaml_text +
            "arms: {control: {train: c.jsonl}, experiment: {train: e.jsonl}}\n")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    line = next(text for text in str(err.value).splitlines() if f"  {field}: " in text)
    assert given in line
    assert "(line " in line  # the line of the bad value in the YAML


@pytest.mark.parametrize("text", ["lora: {alpha: yes}\n", "lora: {r: 8.0}\n", "name: 123\n",
                                  "arms: {control: {train: 5}, experiment: {train: e.jsonl}}\n"])
def test_other_sections_are_strict_too(tmp_path, text):
    data = yaml.safe_load(text)
    with pytest.raises(ConfigError, match="invalid experiment file"):
        load_config(write(tmp_path, base(**data)))


def test_numbers_written_naturally_are_accepted(tmp_path):
    text = ("name: pair\nbase_model: tiny-llama\ntraining:\n  max_steps: 10\n"
            "  learning_rate: 2e-4\n  warmup: 1\n  weight_decay: 0\n"
            "arms: {control: {train: c.jsonl}, experiment: {train: e.jsonl}}\n")
    cfg = load_config(write(tmp_path, text))
    assert cfg.training.learning_rate == 2e-4  # YAML 1.1 alone reads "2e-4" as a string
    assert cfg.training.warmup == 1.0 and cfg.training.weight_decay == 0.0


@pytest.mark.parametrize(("extra", "line", "key", "first"),
                         [("  max_steps: 4\n", 5, "max_steps", 4), ("name: other\n", 5, "name", 1)])
def test_a_key_given_twice_names_its_line(tmp_path, extra, line, key, first):
    nested = extra.startswith("  ")
    text = ("name: pair\nbase_model: tiny-llama\ntraining:\n  max_steps: 3\n" +
            (extra if nested else "") +
            "arms: {control: {train: c.jsonl}, experiment: {train: e.jsonl}}\n")
    if not nested:
        text = text.replace("arms:", extra + "arms:")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}:{line}: key {key!r} given twice (first on line {first})"


def test_a_key_given_twice_in_a_flow_mapping_is_found(tmp_path):
    path = write(tmp_path, "name: pair\nbase_model: tiny-llama\ntraining: {max_steps: 3, "
                           "seed: 1, seed: 2}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}:3: key 'seed' given twice (first on line 3)"


@pytest.mark.parametrize(("written", "read"), [
    ("010", 10), ("0o10", 8), ("0x10", 16), ("1:30", "1:30"), ("1_000", "1_000")])
def test_numbers_are_read_as_yaml_1_2_reads_them(tmp_path, written, read):
    """YAML 1.1 (PyYAML's default) reads 010 as 8, 1:30 as 90 and 1_000 as 1000."""
    text = (f"name: pair\nbase_model: tiny-llama\ntraining:\n  max_steps: 3\n  seed: {written}\n"
            "arms: {control: {train: c.jsonl}, experiment: {train: e.jsonl}}\n")
    if isinstance(read, int):
        assert load_config(write(tmp_path, text)).training.seed == read
    else:
        with pytest.raises(ConfigError, match=f"training.seed: .*got '{read}' \\(a string\\)"):
            load_config(write(tmp_path, text))


@pytest.mark.parametrize("char", ["\x07", "\x00", "\ufffe", "\x1b"])
def test_a_control_character_names_its_line(tmp_path, char):
    path = tmp_path / "exp.yaml"
    path.write_text(f"name: pair\nbase_model: tiny{char}llama\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}:2: not valid YAML \(control character "
                                          rf"U\+{ord(char):04X}"):
        load_config(path)


@pytest.mark.parametrize(("training", "field", "message"), [
    ({"max_steps": 3, "seed": -1}, "training.seed", "greater than or equal to 0"),
    ({"max_steps": 3, "seed": 2**32}, "training.seed", "less than or equal to 4294967295"),
    ({"max_steps": 3, "seed": 2**32 - 1, "replicates": 2}, "training", "seed + replicates - 1"),
    ({"max_steps": 3, "replicates": 10**9}, "training.replicates", "less than or equal to 100"),
    ({"epochs": 1e300}, "training.epochs", "less than or equal to 10000"),
    ({"max_steps": 10**26}, "training.max_steps", "less than or equal to 100000000"),
    ({"max_steps": 3, "gradient_accumulation_steps": 10**18},
     "training.gradient_accumulation_steps", "less than or equal to 65536"),
])
def test_values_no_run_can_use_are_refused_at_load(tmp_path, training, field, message):
    path = write(tmp_path, base(training=training))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"  {field}: " in str(err.value) and message in str(err.value)


@pytest.mark.parametrize(("budget", "message"), [(0.0001, "greater than or equal to 0.01"),
                                                 (1e300, "less than or equal to 10000000")])
def test_a_budget_is_a_sum_of_money(tmp_path, budget, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, base(budget_usd=budget)))




def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_bytes(b"name: pair\nbase_model: caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2: not UTF-8 text \(byte 0xe9\)"):
        load_config(path)


def test_special_files_are_refused_without_opening_them(tmp_path):
    import os

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it would block for ever
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(tmp_path / "loop2.yaml")
    (tmp_path / "loop2.yaml").symlink_to(loop)
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    for path, reason in ((fifo, "a FIFO"), (loop, "a symlink loop"), (folder, "a directory")):
        with pytest.raises(ConfigError, match=f"^{path}: cannot read experiment file: {reason}"):
            load_config(path)


def test_base_model_folder_is_relative_to_the_experiment_file(tmp_path):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    cfg = load_config(write(tmp_path, base(base_model="models/mine")))
    assert cfg.base_model == str(tmp_path / "models" / "mine")
    cfg = load_config(write(tmp_path, base(base_model="./models/mine")))
    assert cfg.base_model == str(tmp_path / "models" / "mine")
    hub = load_config(write(tmp_path, base(base_model="meta-llama/Meta-Llama-3-8B")))
    assert hub.base_model == "meta-llama/Meta-Llama-3-8B"  # no such folder here: a hub id


@pytest.mark.parametrize("name", ["./models/nope", "../nope", "/nonexistent/model", "a/b/c",
                                  "models/"])
def test_a_base_model_path_that_does_not_exist_says_so(tmp_path, name):
    path = write(tmp_path, base(base_model=name))
    with pytest.raises(ConfigError, match=rf"^{path}:\d+: base_model: no such folder: "):
        load_config(path)


@pytest.mark.parametrize("name", ["bad id!", "org/na..me", "org--x/y"])
def test_a_base_model_that_is_neither_folder_nor_hub_id(tmp_path, name):
    with pytest.raises(ConfigError, match=r"is neither a folder .* nor a hub model id"):
        load_config(write(tmp_path, base(base_model=name)))


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_infinite_or_nan_numbers_are_refused(tmp_path, value):
    text = ("name: pair\nbase_model: tiny-llama\ntraining:\n  max_steps: 10\n"
            f"  learning_rate: {value}\n"
            "arms: {control: {train: c.jsonl}, experiment: {train: e.jsonl}}\n")
    with pytest.raises(ConfigError, match=r"training.learning_rate: Input should be a finite"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("revision", ["../../etc", "a b", "-x", "main/", ""])
def test_a_base_model_revision_that_cannot_be_one_is_refused(tmp_path, revision):
    with pytest.raises(ConfigError, match="base_model_revision"):
        load_config(write(tmp_path, base(base_model_revision=revision)))


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/1", "0" * 40, "sha256:" + "a" * 64])
def test_revisions_of_every_kind_are_accepted(tmp_path, revision):
    assert load_config(write(tmp_path, base(base_model_revision=revision))).base_model_revision \
        == revision


def test_a_base_model_symlink_loop_or_broken_link(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop")
    (tmp_path / "broken").symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError, match=r"base_model: .*loop: a symlink loop"):
        load_config(write(tmp_path, base(base_model="./loop")))
    with pytest.raises(ConfigError, match=r"base_model: no such folder: .*broken \(a broken"):
        load_config(write(tmp_path, base(base_model="./broken")))


def test_long_examples_is_a_policy_and_part_of_the_hash():
    assert parse_config(base()).training.long_examples == "error"
    drop = parse_config(base(training={"max_steps": 10, "long_examples": "drop"}))
    assert drop.training.long_examples == "drop" and drop.sha256() != parse_config(base()).sha256()
    with pytest.raises(ConfigError, match=r"training\.long_examples"):
        parse_config(base(training={"max_steps": 10, "long_examples": "skip"}))



@pytest.mark.parametrize("hub_id", ["méta/llama-ü", "meta/llam\u0430", "org/" + "a" * 97, "a/b.git",
                                    "-org/name", "org/name-", "org/na..me"])
def test_a_hub_id_the_hub_refuses_is_refused_at_load_naming_the_line(tmp_path, hub_id):
    """The hub's own rule (huggingface_hub.validate_repo_id): ASCII letters, digits, '-', '_',
    '.'; `\\w` took Unicode letters, and the hub then raised HFValidationError with a traceback."""
    from tests.training.pairs import write_experiment
    from training.experiment.config import ConfigError, load_config

    cfg = write_experiment(tmp_path)
    cfg.write_text(cfg.read_text().replace("base_model: tiny-llama", f"base_model: {hub_id}"))
    with pytest.raises(ConfigError, match=r"experiment\.yaml:2: base_model: .* is neither a "
                                          r"folder .* nor a hub model id"):
        load_config(cfg)


@pytest.mark.parametrize("hub_id", ["meta-llama/Meta-Llama-3-8B", "gpt2", "Qwen/Qwen2.5-0.5B",
                                    "_org/a_b", "org/" + "a" * 96])
def test_hub_ids_the_hub_accepts_load(tmp_path, hub_id):
    from tests.training.pairs import write_experiment
    from training.experiment.config import load_config

    cfg = write_experiment(tmp_path)
    cfg.write_text(cfg.read_text().replace("base_model: tiny-llama", f"base_model: {hub_id}"))
    assert load_config(cfg).base_model == hub_id
