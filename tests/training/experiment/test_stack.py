"""Stack outputs: the file and the Pulumi CLI, into a typed object; every problem is exit 2."""

import json
import os
import stat

import pytest
from click.testing import CliRunner

from tests.training.fake_azure import OUTPUTS
from training.cli import main
from training.experiment.stack import (
    StackError,
    load_outputs,
    parse_outputs,
    read_outputs_file,
    read_stack,
)


def write(tmp_path, data, name="outputs.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_outputs_file_parses_into_a_typed_object(tmp_path):
    outputs = read_outputs_file(write(tmp_path, OUTPUTS))
    assert outputs.data_assets["control"].id == "azureml:control-train:1"
    assert outputs.data_assets["eval"].id == "azureml:eval:1"
    assert outputs.cluster("gpu") == "gpu-cluster"
    assert outputs.cluster("cpu-cluster") == "cpu-cluster"
    assert outputs.workspace_id.endswith("/workspaces/mlw-paired-finetune-dev")


def test_older_outputs_without_vm_sizes_and_newer_keys_are_accepted(tmp_path):
    older = {k: v for k, v in OUTPUTS.items() if not k.endswith("_vm_size")}
    outputs = read_outputs_file(write(tmp_path, {**older, "something_new": 1}))
    assert outputs.gpu_vm_size is None
    numeric = {**OUTPUTS, "data_assets": {"control": {"name": "c", "version": 2},
                                          "experiment": {"name": "e", "version": "2"}}}
    assert parse_outputs(numeric, "x").data_assets["control"].version == "2"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("workspace_name"), "workspace_name: missing"),
    (lambda d: d["data_assets"].pop("experiment"), "no data asset for experiment"),
    (lambda d: d["data_assets"].update(holdout={"name": "h", "version": "1"}), "holdout"),
    (lambda d: d.update(subscription_id="not-a-guid"), "subscription_id"),
    (lambda d: d.update(data_assets=["control"]), "data_assets"),
    (lambda d: d.update(gpu_cluster="[secret]"), "--show-secrets"),
    (lambda d: d["data_assets"]["control"].pop("version"), "data_assets.control.version"),
])
def test_malformed_outputs_name_the_key(mutate, message):
    data = json.loads(json.dumps(OUTPUTS))
    mutate(data)
    with pytest.raises(StackError, match=message.replace("[", r"\[")):
        parse_outputs(data, "outputs.json")


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(resource_group="DefaultEndpointsProtocol=https;AccountKey=SECRETVALUE-8d7f"),
    lambda d: d["data_assets"].update({"https://x?sig=SECRETVALUE-8d7f": {"name": "h",
                                                                          "version": "1"}}),
    lambda d: d.update(subscription_id="password=SECRETVALUE-8d7f"),
    lambda d: d.update(workspace_name="SECRETVALUEq83vEjX9mLk2Pz0aB7cD1eF4gH6iJ8kL0mN2oP4qR6sT8uV+w=="),
    lambda d: d.update(subscription_id="eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJTRUNSRVRWQUxVRSJ9.x"),
    lambda d: d.update(cpu_vm_size="DefaultEndpointsProtocol=https;AccountKey=SECRETVALUE+8d7f=="),
])
def test_a_pasted_credential_is_not_echoed(mutate):
    data = json.loads(json.dumps(OUTPUTS))
    mutate(data)
    with pytest.raises(StackError) as err:
        parse_outputs(data, "outputs.json")
    assert "SECRETVALUE" not in str(err.value) and "eyJzdWIi" not in str(err.value)
    assert "(not shown)" in str(err.value)


@pytest.mark.parametrize("content, message", [
    ("{not json", r"outputs.json:1: not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ("null", "expected a JSON object"),
    (b"\xff\xfe{\x00}\x00", "UTF-16"),
    (b"\x80\x81", "not UTF-8"),
    ("", "empty"),
    ('{"a": 1, "a": 2}', "given twice: a"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"gpu_cluster": {"value": "x", "secret": false}}', "another format"),
])
def test_unreadable_outputs_files(tmp_path, content, message):
    path = tmp_path / "outputs.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(StackError, match=message):
        read_outputs_file(path)


def test_bom_is_fine_and_expectations_are_words(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(OUTPUTS).encode())
    assert read_outputs_file(path).location == "eastus"
    with pytest.raises(StackError) as e:
        parse_outputs({**OUTPUTS, "location": "East US", "subscription_id": "-" * 36}, "o.json")
    assert "short name in lower case" in str(e.value) and "pattern" not in str(e.value)
    assert "subscription GUID" in str(e.value)
    nested = json.loads(json.dumps(OUTPUTS))
    nested["data_assets"]["control"]["version"] = "[secret]"
    with pytest.raises(StackError, match="--show-secrets"):
        parse_outputs(nested, "o.json")
    nested["data_assets"]["control"]["version"] = "latest"
    with pytest.raises(StackError, match="not `latest`"):
        parse_outputs(nested, "o.json")


def test_devices_and_fifos_do_not_hang(tmp_path):
    with pytest.raises(StackError, match="not a regular file"):
        read_outputs_file("/dev/zero")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(StackError, match="empty"):  # no writer: answered at once
        read_outputs_file(fifo)
    big = tmp_path / "big.json"
    big.write_text(" " * 2_000_000)
    with pytest.raises(StackError, match="not stack outputs"):
        read_outputs_file(big)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(StackError, match="cannot read"):
        read_outputs_file(tmp_path / "nope.json")
    with pytest.raises(StackError, match="cannot read"):
        read_outputs_file(tmp_path)


def test_exactly_one_source():
    with pytest.raises(StackError, match="exactly one"):
        load_outputs(None, None)
    with pytest.raises(StackError, match="exactly one"):
        load_outputs("dev", "x.json")


def _fake_pulumi(folder, script: str):
    """A `pulumi` executable on PATH that behaves as the real CLI does for `stack output`."""
    exe = folder / "bin" / "pulumi"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe.parent)


def test_stack_through_the_pulumi_cli(tmp_path, monkeypatch):
    (tmp_path / "Pulumi.yaml").write_text("name: x\n")
    args_file = tmp_path / "args"
    path = _fake_pulumi(tmp_path, f'echo "$@" > {args_file}\ncat <<EOF\n{json.dumps(OUTPUTS)}\nEOF\n')
    monkeypatch.setenv("PATH", path + os.pathsep + os.environ["PATH"])
    outputs = read_stack("dev", tmp_path)
    assert outputs.workspace_name == "mlw-paired-finetune-dev"
    assert args_file.read_text().split() == ["stack", "output", "--json", "--show-secrets",
                                             "--stack", "dev", "--non-interactive"]


def test_unknown_stack_says_what_to_do(tmp_path, monkeypatch):
    (tmp_path / "Pulumi.yaml").write_text("name: x\n")
    path = _fake_pulumi(tmp_path, "echo \"error: no stack named 'prod' found\" >&2\nexit 255\n")
    monkeypatch.setenv("PATH", path + os.pathsep + os.environ["PATH"])
    with pytest.raises(StackError, match=r"(?s)no stack named 'prod'.*pulumi stack ls"):
        read_stack("prod", tmp_path)


def test_missing_pulumi_cli_and_missing_project(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    with pytest.raises(StackError, match=r"no Pulumi\.yaml"):
        read_stack("dev", tmp_path)
    (tmp_path / "Pulumi.yaml").write_text("name: x\n")
    with pytest.raises(StackError, match=r"pulumi CLI is not installed.*--outputs-file"):
        read_stack("dev", tmp_path)


def test_cli_reports_a_bad_outputs_file_with_exit_2(tmp_path):
    bad = write(tmp_path, {**OUTPUTS, "datastore": None})
    for args in (["submit", "--outputs-file", str(bad)], ["status", "--outputs-file", str(bad)],
                 ["cancel", "p", "--outputs-file", str(bad)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert "datastore" in result.output and "Traceback" not in result.output
