"""`train submit/status/logs/cancel --backend openai`: the commands end to end against the stand-in
service on 127.0.0.1 (OPENAI_BASE_URL, as the openai client reads it), no Pulumi stack needed."""

import json
import os

import pytest
from click.testing import CliRunner

from tests.training import openai_server
from tests.training.hosted.test_openai_backend import KEY, write_config
from training.cli import main


@pytest.fixture
def service(monkeypatch, tmp_path):
    fake = openai_server.FakeOpenAI()
    server = openai_server.start(fake)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PAIRED_FINETUNE_LOCK_DIR", str(tmp_path))  # this test's own locks
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
    assert "control: ftjob-0004 cancelled" in result.output
    assert "experiment: ftjob-0005 cancelled" in result.output
    again = train("cancel", pair_id, "--backend", "openai")
    assert again.exit_code == 0 and "experiment: ftjob-0005 already cancelled" in again.output
    status = train("status", pair_id, "--backend", "openai")
    assert status.exit_code == 0 and "cancelled" in status.output


def test_a_failed_cancel_is_reported_per_arm_and_exits_1(service, tmp_path):
    cfg = write_config(tmp_path)
    pair_id = pair_id_of(train("submit", "--config", cfg, "--poll-seconds", "0.01").output)
    service.fail[r"^POST /fine_tuning/jobs/ftjob-0005/cancel$"] = 400
    result = train("cancel", pair_id, "--backend", "openai")
    assert result.exit_code == 1, result.output
    assert "control: ftjob-0004 cancelled" in result.output
    assert "experiment: ftjob-0005 could not be cancelled (HTTP 400" in result.output


@pytest.mark.parametrize("pair_id", ["../../x", "a b", "x" * 600, "-x", "UPPER", "a\nb"])
def test_a_pair_id_that_cannot_name_a_pair_is_bad_input_before_anything(service, tmp_path,
                                                                          pair_id):
    cfg = write_config(tmp_path)
    out = tmp_path / "dry" / "out"
    runs = [("submit", "--config", cfg, "--pair-id", pair_id, "--dry-run", "--out", out),
            ("submit", "--config", cfg, "--pair-id", pair_id),
            ("status", "--backend", "openai", "--", pair_id),
            ("logs", "--backend", "openai", "--", pair_id),
            ("cancel", "--backend", "openai", "--", pair_id)]
    for args in runs:
        result = train(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "PAIR" in result.output or "pair id" in result.output, result.output
        assert "Traceback" not in result.output
    assert service.requests == [] and not (tmp_path / "dry").exists()
    assert not list(tmp_path.parent.glob("x-*.json"))


def test_azure_ml_options_and_unusable_out_folders_are_refused(service, tmp_path):
    cfg = write_config(tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for args, expected in [
        (("--from-sweep", "s1"), "--from-sweep: Azure ML options"),
        (("--outputs-file", a_file), "--outputs-file: Azure ML options"),
        (("--stack", "dev", "--from-sweep", "s"), "--stack, --from-sweep: Azure ML"),
        (("--dry-run", "--out", tmp_path / "d", "--wait"), "--wait follows submitted jobs"),
        (("--dry-run", "--out", a_file), "cannot write there"),
        (("--dry-run", "--out", a_file / "sub"), "cannot write there"),
    ]:
        result = train("submit", "--config", cfg, *args)
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output, (args, result.output)
    result = train("status", "p1", "--backend", "openai", "--stack", "dev")
    assert result.exit_code == 2 and "--stack: Azure ML options" in result.output
    assert service.requests == []


def test_hosted_only_options_and_credentials(service, tmp_path, monkeypatch):
    result = train("status", "some-pair", "--wait", "--outputs-file", tmp_path / "none.json")
    assert result.exit_code == 2 and "status --wait follows a hosted pair" in result.output
    monkeypatch.delenv("OPENAI_API_KEY")
    result = train("submit", "--config", write_config(tmp_path))
    assert result.exit_code == 2 and "OPENAI_API_KEY is not set" in result.output
    assert service.requests == []


def test_a_store_that_cannot_take_the_metrics_is_one_line(service, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    cfg = write_config(tmp_path)
    pair_id = pair_id_of(train("submit", "--config", cfg, "--poll-seconds", "0.01").output)
    for uri in ("http://alice:S3CRETPW@127.0.0.1:9/", "bogus://x"):
        result = train("status", pair_id, "--backend", "openai", "--wait", "--poll-seconds",
                       "0.01", "--tracking-uri", uri)
        assert result.exit_code == 1, result.output
        assert "error: MLflow store" in result.output and "the metrics were not logged" in (
            result.output)
        assert "S3CRETPW" not in result.output and "Traceback" not in result.output
        assert not isinstance(result.exception, Exception) or isinstance(result.exception,
                                                                          SystemExit)


def test_a_pair_over_budget_uploads_nothing_unless_allowed(service, tmp_path):
    import yaml

    cfg = write_config(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    data["budget_usd"] = 0.01
    cfg.write_text(yaml.safe_dump(data))
    estimate = train("estimate", "--config", cfg)
    assert estimate.exit_code == 0 and "exceeds budget_usd 0.01" in estimate.output
    result = train("submit", "--config", cfg)
    assert result.exit_code == 1 and "exceeds budget_usd" in result.output, result.output
    assert not service.sent("POST")  # looked the pair up, uploaded and created nothing
    allowed = train("submit", "--config", cfg, "--allow-over-budget", "--poll-seconds", "0.01")
    assert allowed.exit_code == 0 and "submitted anyway" in allowed.output, allowed.output
    posted = len(service.sent("POST"))
    again = train("submit", "--config", cfg)  # the pair exists: reported, whatever the budget
    assert again.exit_code == 0 and "already submitted" in again.output, again.output
    assert len(service.sent("POST")) == posted


def test_a_pair_id_reused_for_another_config_is_refused(service, tmp_path):
    first = write_config(tmp_path / "a")
    assert train("submit", "--config", first, "--pair-id", "p1",
                 "--poll-seconds", "0.01").exit_code == 0
    sent = len(service.requests)
    other = write_config(tmp_path / "b", n_epochs=7)
    result = train("submit", "--config", other, "--pair-id", "p1")
    assert result.exit_code == 2, result.output
    assert "is not this pair's: n_epochs 2 (this pair: 7)" in result.output
    assert not service.sent("POST")[5:] and len(service.requests) > sent  # looked, sent nothing


def test_a_second_submit_of_the_same_pair_at_once_is_refused(service, tmp_path):
    import subprocess
    import sys

    import yaml

    from tests.training.experiment.test_locks import HOLD

    cfg = write_config(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    data["name"] = f"locked-{tmp_path.name[-8:].lower().replace('_', '-')}"  # a pair of its own
    cfg.write_text(yaml.safe_dump(data))
    dry = train("submit", "--config", cfg, "--dry-run", "--out", tmp_path / "d")
    pair_id = pair_id_of(dry.output.splitlines()[-1]).rstrip(":")
    folder = tmp_path / f"paired-finetune-submit-{os.getuid()}" / pair_id  # the fixture's
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = train("submit", "--config", cfg)
        assert result.exit_code == 2 and "another `train submit` of pair" in result.output
        assert not service.sent("POST")
    finally:
        holder.kill()
        holder.wait()


def test_control_characters_in_the_services_events_never_reach_the_terminal(service, tmp_path):
    cfg = write_config(tmp_path)
    first = train("submit", "--config", cfg, "--poll-seconds", "0.01")
    assert first.exit_code == 0, first.output
    for jid in service.events:
        service.event(jid, "info", "step 1\x1b[2J\x1b]0;owned\x07")  # clear screen, set title
    status = train("status", pair_id_of(first.output), "--backend", "openai", "--wait",
                   "--poll-seconds", "0.01", "--tracking-uri",
                   f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert status.exit_code == 0, status.output
    assert "\x1b" not in status.output and "\x07" not in status.output
    assert "step 1\\x1b[2J\\x1b]0;owned\\x07" in status.output  # shown, escaped
