"""Results on stdout, diagnostics on stderr: `train estimate > f` holds the table, `train submit
--format json | jq -r .pair_id` the pair id, and every `--format json` is one JSON object on stdout
with nothing else there (click's runner keeps the two streams apart, as a shell does)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.training.azureml.test_register import PAIR, local_pair
from training.cli import main

REPO = Path(__file__).resolve().parents[3]
LOCAL = REPO / "experiments" / "local.yaml"


@pytest.fixture
def pinned(hub_cache):
    """submit pins the example's base model to the cached commit."""


def test_estimate_prints_its_table_on_stdout(tiny_model_path):
    result = CliRunner().invoke(main, ["estimate", "--config", str(LOCAL)])
    assert result.exit_code == 0, result.output
    assert "worst case" in result.stdout and "FLOPs" in result.stdout
    assert "memory per GPU" in result.stdout
    assert "worst case" not in result.stderr
    as_json = CliRunner().invoke(main, ["estimate", "--config", str(LOCAL), "--format", "json"])
    data = json.loads(as_json.stdout)  # the whole of stdout is one object
    assert isinstance(data["cost_usd"], float) and isinstance(data["memory_plan"], dict)


def test_submit_dry_run_json_gives_the_pair_id(train, fake, tmp_path, pinned):
    out = tmp_path / "jobs"
    result = train("submit", "--dry-run", "--out", str(out), "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    pair_id = data["pair_id"]
    assert data["state"] == "dry-run" and data["dry_run"] is True
    assert {j["arm"] for j in data["jobs"]} == {"control", "experiment"}
    assert sorted(Path(j["file"]).name for j in data["jobs"]) == [
        f"{pair_id}-control.yml", f"{pair_id}-experiment.yml"]
    assert all(Path(j["file"]).is_file() for j in data["jobs"])
    assert fake.requests == []
    table = train("submit", "--dry-run", "--out", str(tmp_path / "t"))
    assert f"wrote {tmp_path / 't' / pair_id}-control.yml" in table.stdout
    assert "nothing was sent" in table.stderr and "nothing was sent" not in table.stdout


def test_submit_and_status_json(train, fake, pinned):
    submitted = train("submit", "--format", "json")
    assert submitted.exit_code == 0, submitted.output
    data = json.loads(submitted.stdout)
    assert data["state"] == "submitted"
    assert sorted(j["name"] for j in data["jobs"]) == sorted(fake.jobs)
    assert {j["status"] for j in data["jobs"]} == {"Queued"}
    again = json.loads(train("submit", "--format", "json").stdout)
    assert again["pair_id"] == data["pair_id"] and again["state"] == "already-submitted"

    status = train("status", data["pair_id"], "--format", "json")
    assert status.exit_code == 0, status.output
    one = json.loads(status.stdout)
    assert one["pair_id"] == data["pair_id"]
    assert sorted(j["arm"] for j in one["jobs"]) == ["control", "experiment"]
    listing = json.loads(train("status", "--format", "json").stdout)
    assert [p["pair_id"] for p in listing["pairs"]] == [data["pair_id"]]
    table = train("status", data["pair_id"])
    assert f"{data['pair_id']}-control" in table.stdout


def test_register_json(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    local_pair(tmp_path / "runs", PAIR)
    argv = ["register", PAIR, "--tracking-uri", uri, "--output-dir", str(tmp_path / "runs")]
    result = CliRunner().invoke(main, [*argv, "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["pair_id"] == PAIR
    assert [(m["arm"], m["version"], m["created"]) for m in data["models"]] == [
        ("control", "1", True), ("experiment", "1", True)]
    table = CliRunner().invoke(main, argv)
    assert table.stdout.count("already registered") == 2
    assert "MLflow model registry" in table.stderr


def test_data_validate_json(tmp_path):
    files = [str(p) for p in sorted((REPO / "examples" / "data").glob("*.jsonl"))][:2]
    result = CliRunner().invoke(main, ["data", "validate", *files, "--no-tokenizer",
                                       "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True and [f["path"] for f in data["files"]] == files
    assert data["rows"] == sum(f["rows"] for f in data["files"]) > 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": ""}\n')
    refused = CliRunner().invoke(main, ["data", "validate", str(bad), "--no-tokenizer",
                                        "--format", "json"])
    assert refused.exit_code == 2
    report = json.loads(refused.stdout)
    assert report["ok"] is False and report["problems"] == [f"{bad}:2: text is empty"]
    table = CliRunner().invoke(main, ["data", "validate", *files, "--no-tokenizer"])
    assert "Data files" in table.stdout


def test_errors_are_one_line_on_stderr_with_the_exit_code(tmp_path):
    missing = tmp_path / "nope.yaml"
    result = CliRunner().invoke(main, ["estimate", "--config", str(missing)])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and str(missing) in result.stderr
    bad_pair = CliRunner().invoke(main, ["compare", "Bad Pair!", "--tracking-uri",
                                         f"sqlite:///{tmp_path / 'x.db'}"])
    assert bad_pair.exit_code == 2 and "is not a pair id" in bad_pair.stderr


@pytest.mark.parametrize("argv", [
    ["status", "abc\n", "--stack", "dev"],
    ["logs", "Bad", "--stack", "dev"],
    ["cancel", "a.b", "--stack", "dev"],
    ["submit", "--pair-id", "abc\n", "--stack", "dev"],
    ["compare", "abc\n"],
    ["register", "abc\n", "--stack", "dev"],
])
def test_a_bad_pair_id_is_refused_before_the_stack_is_read(argv, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `pulumi`: reading the stack would fail
    result = CliRunner().invoke(main, [*argv, "--pulumi-dir", str(tmp_path)]
                                if "--stack" in argv else argv)
    assert result.exit_code == 2, result.output
    assert "is not a pair id" in result.stderr and "pulumi" not in result.stderr
    assert result.stdout == ""


def test_a_corrupt_local_pair_is_bad_input_in_one_line(tmp_path):
    pair_dir = local_pair(tmp_path / "runs", PAIR)
    argv = ["register", PAIR, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
            "--output-dir", str(tmp_path / "runs")]
    for manifest in ("{bad", "[]"):
        (pair_dir / "pair.json").write_text(manifest)
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert result.stderr.startswith(f"error: {pair_dir / 'pair.json'}: the pair's manifest")


def test_a_dry_run_that_is_refused_makes_no_out_folder(train, tmp_path, pinned):
    out = tmp_path / "never"
    result = train("submit", "--dry-run", "--out", str(out), "--pair-id", "a" * 201,
                   config=REPO / "experiments" / "llama3-70b.yaml")
    assert result.exit_code == 2 and not out.exists(), result.output


def test_one_replicate_has_no_replicate_number(train, tmp_path, pinned):
    dry = json.loads(train("submit", "--dry-run", "--out", str(tmp_path / "d"),
                           "--format", "json").stdout)
    live = json.loads(train("submit", "--format", "json").stdout)
    assert [j["replicate"] for j in dry["jobs"]] == [None, None]
    assert [j["replicate"] for j in live["jobs"]] == [None, None]


def test_ctrl_c_in_a_command_without_its_own_handler_exits_130(tiny_model_path):
    """`train estimate` while it counts tokens: SIGINT is exit 130 and one line, never click's
    "Aborted!" (exit 1), so `train run && train register` stops for the right reason."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "training.cli", "estimate", "--config",
                             str(LOCAL)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "torch" not in _imported(proc.pid):
        time.sleep(0.05)  # interrupt once the command is at work, past click's start-up
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Aborted" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted: `train estimate` stopped")


def _imported(pid: int) -> str:
    """The shared libraries the process has mapped so far (torch's: it is counting tokens)."""
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""
