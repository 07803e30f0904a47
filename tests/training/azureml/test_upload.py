"""`train data upload` through the real MLClient (fake workspace transport) and the real
azure-storage-blob client (fake blob transport): where the bytes go, what is refused, what is
checked afterwards, and that bad data sends nothing."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.training.fake_azure import OUTPUTS, WORKSPACE, FakeCredential
from tests.training.fake_azure_assets import ACCOUNT, CONTAINER, FakeWorkspace
from tests.training.fake_blob import FakeBlobStorage
from training.azureml import upload
from training.cli import main

REPO = Path(__file__).resolve().parents[3]
ROW = {"messages": [{"role": "user", "content": "Comment: def f(x): return x"},
                    {"role": "assistant", "content": "# Return x unchanged."}]}
PATHS = {"control": "datasets/control/v1/train.jsonl",
         "experiment": "datasets/experiment/v1/train.jsonl", "eval": "datasets/eval/v1/eval.jsonl"}


def rows(n: int, tag: str) -> bytes:
    out = []
    for i in range(n):
        row = json.loads(json.dumps(ROW))
        row["messages"][0]["content"] += f" #{tag}{i}"
        out.append(json.dumps(row))
    return ("\n".join(out) + "\n").encode()


@pytest.fixture
def workspace():
    ws = FakeWorkspace()
    ws.add_datastore()
    for role, name in (("control", "control-train"), ("experiment", "experiment-train"),
                       ("eval", "eval")):
        ws.register_data(name, "1", PATHS[role])
    return ws


@pytest.fixture
def blobs():
    return FakeBlobStorage()


@pytest.fixture
def files(tmp_path):
    data = {"control": rows(30, "c"), "experiment": rows(30, "e"), "eval": rows(12, "v")}
    for role, content in data.items():
        (tmp_path / f"{role}.jsonl").write_bytes(content)
    cfg = {"name": "upload-test", "base_model": "tiny-llama", "method": "full",
           "training": {"max_steps": 10, "max_seq_length": 256},
           "arms": {"control": {"train": "control.jsonl"},
                    "experiment": {"train": "experiment.jsonl"}},
           "eval": "eval.jsonl"}
    (tmp_path / "pair.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "outputs.json").write_text(json.dumps(OUTPUTS))
    return data


@pytest.fixture
def upload_cmd(tmp_path, workspace, blobs, files):
    def invoke(*extra, config=None):
        argv = ["data", "upload", "--config", str(config or tmp_path / "pair.yaml"),
                "--outputs-file", str(tmp_path / "outputs.json"), *extra]
        if "--tokenizer" in argv:
            argv.remove("--tokenizer")
        else:
            argv.append("--no-tokenizer")
        return CliRunner().invoke(main, argv, obj={
            "azure_transport": workspace, "azure_credential": FakeCredential(),
            "blob_transport": blobs})

    return invoke


def stored(blobs, role):
    return blobs.data(ACCOUNT, CONTAINER, PATHS[role])


def test_uploads_each_file_to_its_assets_blob_and_checks_it(upload_cmd, workspace, blobs, files):
    result = upload_cmd()
    assert result.exit_code == 0, result.output
    for role in ("control", "experiment", "eval"):
        assert stored(blobs, role) == files[role]
        blob = blobs.blobs[(ACCOUNT, CONTAINER, PATHS[role])]
        assert blob.md5 == hashlib.md5(files[role]).digest()
        assert blob.metadata == {"sha256": hashlib.sha256(files[role]).hexdigest()}
        assert f"https://{ACCOUNT}.blob.core.windows.net/{CONTAINER}/{PATHS[role]}" in result.output
    assert result.output.count("verified sha256") == 3
    # the locations came from the workspace: each data version and the datastore, asked once
    gets = [r.path.split(f"/workspaces/{WORKSPACE}/")[1] for r in workspace.sent("GET")]
    assert gets == ["data/control-train/versions/1", "datastores/training_data",
                    "data/experiment-train/versions/1", "data/eval/versions/1"]
    puts = blobs.sent("PUT")
    assert len(puts) == 3
    for put in puts:
        assert put.headers["if-none-match"] == "*"  # never overwrites
        assert put.headers["authorization"].startswith("Bearer ")  # the identity, no key
        assert "content-md5" in put.headers  # checked by the service in transit
    # read back after the upload
    assert len(blobs.sent("GET")) == 3


def test_chunked_upload_of_a_large_file(upload_cmd, blobs, files, monkeypatch):
    monkeypatch.setattr(upload, "SINGLE_PUT_BYTES", 1024)
    monkeypatch.setattr(upload, "BLOCK_BYTES", 512)
    result = upload_cmd()
    assert result.exit_code == 0, result.output
    assert stored(blobs, "control") == files["control"]
    blocks = [r for r in blobs.sent("PUT") if r.query.get("comp") == "block"]
    assert len(blocks) > 3
    # the stored MD5 of a committed block list is the one the client states: the local file's
    assert blobs.blobs[(ACCOUNT, CONTAINER, PATHS["control"])].md5 == \
        hashlib.md5(files["control"]).digest()


def test_same_bytes_already_there_are_skipped(upload_cmd, blobs, files):
    assert upload_cmd().exit_code == 0
    blobs.requests.clear()
    again = upload_cmd()
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped") == 3
    assert blobs.sent("PUT") == []


def test_same_bytes_without_a_stored_md5_are_compared_by_content(upload_cmd, blobs, files):
    for role in ("control", "experiment", "eval"):
        blobs.put(ACCOUNT, CONTAINER, PATHS[role], files[role], md5=False)
    result = upload_cmd()
    assert result.exit_code == 0, result.output
    assert result.output.count("skipped") == 3
    assert blobs.sent("PUT") == [] and len(blobs.sent("GET")) == 3


@pytest.mark.parametrize("md5", [True, False])
def test_other_bytes_at_the_path_are_refused_and_nothing_is_sent(upload_cmd, blobs, files, md5):
    other = files["experiment"][:-2] + b"X\n"  # same size, other bytes
    blobs.put(ACCOUNT, CONTAINER, PATHS["experiment"], other, md5=md5)
    result = upload_cmd()
    assert result.exit_code == 1, result.output
    assert "already holds other bytes" in result.output and "experiment-train:1" in result.output
    assert "dataAssetVersion" in result.output and "pulumi up" in result.output
    assert blobs.sent("PUT") == []  # not even the arms whose blobs were free
    assert stored(blobs, "experiment") == other
    assert "Traceback" not in result.output


def test_content_that_differs_after_the_upload_fails(upload_cmd, blobs):
    blobs.corrupt_next_put = True
    result = upload_cmd()
    assert result.exit_code == 1
    assert "after the upload" in result.output and "control-train:1" in result.output


def test_bad_data_is_exit_2_and_sends_nothing(upload_cmd, workspace, blobs, tmp_path):
    (tmp_path / "experiment.jsonl").write_text('{"messages": [}\n')
    result = upload_cmd()
    assert result.exit_code == 2, result.output
    assert "experiment.jsonl:1" in result.output and "nothing was uploaded" in result.output
    assert workspace.requests == [] and blobs.requests == []


def test_missing_file_and_unregistered_asset_are_exit_2(upload_cmd, workspace, blobs, tmp_path):
    (tmp_path / "eval.jsonl").unlink()
    result = upload_cmd()
    assert result.exit_code == 2 and "eval.jsonl" in result.output
    assert workspace.requests == [] and blobs.requests == []
    (tmp_path / "eval.jsonl").write_bytes(rows(12, "v"))
    del workspace.data[("experiment-train", "1")]
    result = upload_cmd()
    assert result.exit_code == 2 and "experiment-train:1" in result.output
    assert "pulumi up" in result.output and blobs.sent("PUT") == []


def test_no_permission_says_how_to_get_it(upload_cmd, blobs):
    blobs.forbid_writes = True
    result = upload_cmd()
    assert result.exit_code == 2, result.output
    assert "dataContributors" in result.output and "Traceback" not in result.output


def test_eval_file_without_an_eval_asset_is_not_uploaded(upload_cmd, blobs, tmp_path):
    outputs = {**OUTPUTS, "data_assets": {k: v for k, v in OUTPUTS["data_assets"].items()
                                          if k != "eval"}}
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    result = upload_cmd()
    assert result.exit_code == 0, result.output
    assert "no `eval` data asset" in result.output
    assert {key[2] for key in blobs.blobs} == {PATHS["control"], PATHS["experiment"]}


def test_one_file_for_both_arms_is_uploaded_with_a_warning(upload_cmd, blobs, tmp_path):
    cfg = yaml.safe_load((tmp_path / "pair.yaml").read_text())
    cfg["arms"]["experiment"]["train"] = "control.jsonl"
    (tmp_path / "same.yaml").write_text(yaml.safe_dump(cfg))
    result = upload_cmd(config=tmp_path / "same.yaml")
    assert result.exit_code == 0, result.output
    assert "warning: control and experiment are the same file" in result.output
    assert stored(blobs, "experiment") == stored(blobs, "control")


def test_validates_with_the_base_models_tokenizer(upload_cmd, blobs, tmp_path, tiny_model_path):
    long = json.loads(json.dumps(ROW))
    long["messages"][1]["content"] = "word " * 400  # over max_seq_length 256 tokens
    with open(tmp_path / "control.jsonl", "a") as f:
        f.write(json.dumps(long) + "\n")
    result = upload_cmd("--tokenizer")
    assert result.exit_code == 2, result.output
    assert "control.jsonl:31" in result.output and blobs.requests == []


def test_parse_datastore_uri():
    assert upload.parse_datastore_uri(
        "azureml://subscriptions/s/resourcegroups/rg/workspaces/w/datastores/ds/paths/a/b.jsonl"
    ) == ("ds", "a/b.jsonl")
    assert upload.parse_datastore_uri("azureml://datastores/ds/paths/x.jsonl") == ("ds", "x.jsonl")
    with pytest.raises(upload.TargetError):
        upload.parse_datastore_uri("https://account.blob.core.windows.net/c/x.jsonl")
