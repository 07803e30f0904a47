"""training.arm_data: an arm's datasets encoded once per node and memory-mapped by every process."""

from contextlib import contextmanager

from tests.training.pairs import DATA
from training.data import encode_example, load_examples
from training.experiment.config import Training
from training.recipe.arm_data import cache_folder, prepare_arm_data, split_holdout


class State:
    """The part of accelerate's PartialState that prepare_arm_data uses, as one process sees it."""

    def __init__(self, local_main: bool):
        self.is_local_main_process = local_main

    @contextmanager
    def local_main_process_first(self):
        yield


def test_the_first_process_encodes_and_every_process_memory_maps_the_same_rows(
        tmp_path, tiny_tokenizer, monkeypatch):
    monkeypatch.setenv("PAIRED_FINETUNE_DATA_CACHE", str(tmp_path / "cache"))
    t = Training(max_steps=2, max_seq_length=256)
    out = tmp_path / "control"
    first = prepare_arm_data(t, tiny_tokenizer, "control", out, DATA / "control.jsonl",
                             DATA / "eval.jsonl", State(local_main=True))
    eval_rows = load_examples(DATA / "eval.jsonl")
    assert first.eval_rows == eval_rows
    assert first.params["data.train_rows"] == len(load_examples(DATA / "control.jsonl"))
    assert first.eval.to_list() == [encode_example(r, tiny_tokenizer, 256) for r in eval_rows]
    # Arrow files on disk, memory-mapped: not a table built in this process's memory
    assert first.train.cache_files and first.train.cache_files[0]["filename"].startswith(
        str(cache_folder(out)))
    other = prepare_arm_data(t, tiny_tokenizer, "control", out, tmp_path / "never-read.jsonl",
                             None, State(local_main=False))
    assert other.eval_rows is None and other.params == {}  # it read no rows
    assert other.train.to_list() == first.train.to_list()


def test_a_holdout_and_dropped_rows_stay_aligned_with_their_encoding(tmp_path, tiny_tokenizer,
                                                                     monkeypatch):
    monkeypatch.setenv("PAIRED_FINETUNE_DATA_CACHE", str(tmp_path / "cache"))
    t = Training(max_steps=2, max_seq_length=70, long_examples="drop", eval_fraction=0.2)
    data = prepare_arm_data(t, tiny_tokenizer, "control", tmp_path / "arm",
                            DATA / "control.jsonl", None, State(local_main=True))
    rows = load_examples(DATA / "control.jsonl")
    train_rows, held = split_holdout(rows, 0.2, t.seed)
    kept = [r for r in held if len(encode_example(r, tiny_tokenizer, 10_000)["input_ids"]) <= 70]
    assert data.eval_rows == kept and len(data.eval) == len(kept) < len(held)
    assert data.params["data.eval"] == "holdout 0.2 of train"
    assert data.params["data.train_too_long"] + len(data.train) == len(train_rows)
    assert data.params["data.eval_too_long"] == len(held) - len(kept)


def test_a_file_replaced_since_validation_is_refused(tmp_path, tiny_tokenizer, monkeypatch):
    import json

    import pytest

    from training.data import DataError, file_sha256

    monkeypatch.setenv("PAIRED_FINETUNE_DATA_CACHE", str(tmp_path / "cache"))
    t = Training(max_steps=2, max_seq_length=256)
    validated = {"train": file_sha256(DATA / "control.jsonl"),
                 "eval": file_sha256(DATA / "eval.jsonl")}
    monkeypatch.setenv("PAIRED_FINETUNE_DATA_SHA256", json.dumps(validated))
    data = prepare_arm_data(t, tiny_tokenizer, "control", tmp_path / "a", DATA / "control.jsonl",
                            DATA / "eval.jsonl", State(local_main=True))
    assert len(data.train) > 0  # the files it validated: trained
    monkeypatch.setenv("PAIRED_FINETUNE_DATA_SHA256", json.dumps({**validated, "train": "0" * 64}))
    with pytest.raises(DataError, match=r"control\.jsonl: changed since `train run` validated"):
        prepare_arm_data(t, tiny_tokenizer, "control", tmp_path / "b", DATA / "control.jsonl",
                         DATA / "eval.jsonl", State(local_main=True))
