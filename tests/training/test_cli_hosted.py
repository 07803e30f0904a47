"""`train submit/status/logs/cancel --backend openai`: the commands end to end against the stand-in
service on 127.0.0.1 (OPENAI_BASE_URL, as the openai client reads it), no Pulumi stack needed."""

import json

import pytest
from click.testing import CliRunner

from tests.training import openai_server
from tests.training.test_openai_backend import KEY, write_config
from training.cli import main


@pytest.fixture
def service(monkeypatch):
    fake = openai_server.FakeOpenAI()
    server = openai_server.start(fake)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield fake
    server.shutdown()
    server.server_close()


def train(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def pair_id_of(output: str) -> str:
    return output.split("pair ", 1)[1].split(" ", 1)[0]


def test_submit_status_wait_and_resubmit(service, tmp_path):
    cfg = write_config(tmp_path)  # backend: openai in the file; no --stack needed
    first = train("submit", "--config", cfg, "--poll-seconds", "0.01")
    assert first.exit_code == 0, first.output
    assert "created both jobs" in first.output
    pair_id = pair_id_of(first.output)
    assert len(service.sent("POST", "/fine_tuning/jobs")) == 2

    again = train("submit", "--config", cfg, "--backend", "openai")
    assert again.exit_code == 0, again.output
    assert "already submitted, nothing created or uploaded" in again.output
    assert len(service.sent("POST")) == 5  # 3 uploads + 2 jobs, none new

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    status = train("status", pair_id, "--backend", "openai", "--wait", "--poll-seconds", "0.01",
                   "--tracking-uri", uri)
    assert status.exit_code == 0, status.output
    assert "control: The job has successfully completed" in status.output
    assert "experiment: MLflow run" in status.output
    assert f"train compare {pair_id}" in status.output
    assert "no per-example losses" in status.output
    for result in (first, again, status):
        assert KEY not in result.output
    assert KEY.encode() not in (tmp_path / "mlflow.db").read_bytes()

    listing = train("status", "--backend", "openai")
    assert listing.exit_code == 0, listing.output
    assert f"{pair_id} " in listing.output and "control: succeeded" in listing.output

    logs = train("logs", pair_id, "--backend", "openai", "--arm", "experiment")
    assert logs.exit_code == 0, logs.output
    assert logs.output.index("Created fine-tuning job") < logs.output.index("successfully")


def test_submit_wait_fails_when_a_job_fails(service, tmp_path):
    service.fail_jobs_arms.add("control")
    result = train("submit", "--config", write_config(tmp_path), "--wait", "--poll-seconds",
                   "0.01", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert result.exit_code == 1, result.output
    assert "The job failed due to an internal error." in result.output


def test_bad_data_exit_2_and_nothing_sent(service, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n' * 12)
    result = train("submit", "--config", write_config(tmp_path, control=bad))
    assert result.exit_code == 2, result.output
    assert f"{bad}:1: no assistant message to learn from" in result.output
    assert "Traceback" not in result.output
    assert service.requests == []


def test_second_job_refused_exit_1_and_first_cancelled(service, tmp_path):
    service.fail_create_arms.add("experiment")
    result = train("submit", "--config", write_config(tmp_path), "--poll-seconds", "0.01")
    assert result.exit_code == 1, result.output
    assert "was cancelled" in result.output
    assert [j["status"] for j in service.jobs.values()] == ["cancelled"]


def test_cancel_and_dry_run(service, tmp_path):
    cfg = write_config(tmp_path)
    out = tmp_path / "jobs"
    dry = train("submit", "--config", cfg, "--dry-run", "--out", out)
    assert dry.exit_code == 0, dry.output
    requests = sorted(out.glob("*.json"))
    assert [p.name.rsplit("-", 1)[1] for p in requests] == ["control.json", "experiment.json"]
    assert json.loads(requests[0].read_text())["seed"] == 1234
    assert service.requests == []

    pair_id = pair_id_of(train("submit", "--config", cfg, "--poll-seconds", "0.01").output)
    result = train("cancel", pair_id, "--backend", "openai")
    assert result.exit_code == 0, result.output
    assert "control: cancelled" in result.output and "experiment: cancelled" in result.output


def test_hosted_only_options_and_credentials(service, tmp_path, monkeypatch):
    result = train("status", "some-pair", "--wait", "--outputs-file", tmp_path / "none.json")
    assert result.exit_code == 2 and "status --wait follows a hosted pair" in result.output
    monkeypatch.delenv("OPENAI_API_KEY")
    result = train("submit", "--config", write_config(tmp_path))
    assert result.exit_code == 2 and "OPENAI_API_KEY is not set" in result.output
    assert service.requests == []
