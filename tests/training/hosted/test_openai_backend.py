"""The hosted backend against a stand-in service on 127.0.0.1, through the real `openai` client.

Asserted on the requests the service received: what one paired submission sends, in order; the
two jobs identical but for the training file, suffix and metadata; nothing sent on bad data;
nothing new on re-submission; the first job cancelled when the second cannot be created; 429
retry-after honoured; and the MLflow runs `train compare` reads, with no key anywhere.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.training import openai_server
from tests.training.pairs import DATA
from training.experiment.config import load_config
from training.hosted import backend

KEY = "sk-test-DO-NOT-LEAK-4f1c9e"


def count_words(text: str) -> int:
    return len(text.split()) + 1


@pytest.fixture
def service(monkeypatch):
    fake = openai_server.FakeOpenAI()
    server = openai_server.start(fake)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    yield fake
    server.shutdown()
    server.server_close()


def client_for(fake, max_retries=0):
    return backend.make_client("openai", base_url=fake.url + "/v1", max_retries=max_retries,
                               timeout=10)


def write_config(folder: Path, control=None, experiment=None, eval_file=DATA / "eval.jsonl",
                 **openai_settings) -> Path:
    cfg = {
        "name": "hosted-pair",
        "base_model": "gpt-4o-mini-2024-07-18",
        "backend": "openai",
        "training": {"epochs": 1, "seed": 1234},
        "arms": {"control": {"train": str(control or DATA / "control.jsonl")},
                 "experiment": {"train": str(experiment or DATA / "experiment.jsonl")}},
        "eval": str(eval_file) if eval_file else None,
        "openai": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5,
                   **openai_settings},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def prepared(tmp_path, **kw):
    return backend.prepare(load_config(write_config(tmp_path, **kw)), count=count_words)


def quiet(*_):
    pass


def test_the_hosted_pair_id_follows_the_services_hyperparameters_not_its_endpoint(tmp_path):
    """cfg.sha256 leaves the openai: section out; the service's hyperparameters train the weights,
    so they must still make another pair (a resubmission would otherwise find the old jobs)."""
    first = prepared(tmp_path / "a").pair_id
    assert prepared(tmp_path / "b", api_version="2024-10-21").pair_id == first
    assert prepared(tmp_path / "c", n_epochs=3).pair_id != first
    assert prepared(tmp_path / "d", learning_rate_multiplier=0.25).pair_id != first


def test_one_paired_submission_sends_uploads_then_two_identical_jobs(service, tmp_path):
    prep = prepared(tmp_path)
    result = backend.submit_pair(client_for(service), prep, poll=0.01, sleep=time.sleep, say=quiet)

    assert result.created and result.pair_id == prep.pair_id
    sequence = [(r.method, r.path) for r in service.requests]
    files = [p for m, p in sequence if p.startswith("/files/")]
    assert sequence[:2] == [("GET", "/fine_tuning/jobs"), ("GET", "/files")]
    assert [m for m, p in sequence if p == "/files"] == ["GET", "POST", "POST", "POST"]
    assert len(files) == 3  # each upload checked once until processed
    assert sequence[-2:] == [("POST", "/fine_tuning/jobs"), ("POST", "/fine_tuning/jobs")]

    uploads = service.sent("POST", "/files")
    assert [u.body["purpose"] for u in uploads] == ["fine-tune"] * 3
    assert uploads[0].body["bytes"] == (DATA / "control.jsonl").read_bytes()
    assert uploads[1].body["bytes"] == (DATA / "experiment.jsonl").read_bytes()
    assert uploads[2].body["bytes"] == (DATA / "eval.jsonl").read_bytes()

    control, experiment = (r.body for r in service.sent("POST", "/fine_tuning/jobs"))
    differ = {k for k in control.keys() | experiment.keys() if control.get(k) != experiment.get(k)}
    assert differ == {"training_file", "suffix", "metadata"}
    assert control["model"] == "gpt-4o-mini-2024-07-18" and control["seed"] == 1234
    assert control["validation_file"] == experiment["validation_file"] is not None
    assert control["method"] == {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}}}
    assert control["metadata"]["pair_id"] == experiment["metadata"]["pair_id"] == prep.pair_id
    assert (control["metadata"]["arm"], experiment["metadata"]["arm"]) == ("control", "experiment")
    assert control["metadata"]["data_rows"] == "320"
    assert control["suffix"].endswith("-control") and len(control["suffix"]) <= 40
    # every request authenticated with the key; bodies never carry it
    assert all(r.headers.get("authorization") == f"Bearer {KEY}" for r in service.requests)
    assert not any(KEY.encode() in r.raw for r in service.requests)


def test_resubmission_finds_the_pair_and_sends_nothing_new(service, tmp_path):
    prep = prepared(tmp_path)
    client = client_for(service)
    first = backend.submit_pair(client, prep, poll=0.01, say=quiet)
    before = len(service.requests)

    again = backend.submit_pair(client, prepared(tmp_path), poll=0.01, say=quiet)

    assert not again.created and again.pair_id == first.pair_id
    assert {a: j["id"] for a, j in again.jobs.items()} == {a: j["id"] for a, j in first.jobs.items()}
    new = service.requests[before:]
    assert [r.method for r in new] == ["GET"]  # one listing of the pair's jobs
    assert new[0].query["metadata[pair_id]"] == [prep.pair_id]

    forced = backend.submit_pair(client, prep, force=True, poll=0.01, say=quiet)
    assert forced.created and forced.pair_id.startswith(prep.pair_id + "-")
    assert len(service.sent("POST", "/fine_tuning/jobs")) == 4


def test_bad_data_is_reported_with_lines_and_nothing_is_sent(service, tmp_path):
    good = DATA / "control.jsonl"
    rows = [json.loads(x) for x in good.read_text().splitlines()[:12]]
    rows[2]["messages"][1]["role"] = "human"
    rows[4]["messages"][2]["weight"] = 2
    rows[5] = {"prompt": "a", "completion": "b"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    small = tmp_path / "small.jsonl"
    small.write_text("".join(good.read_text().splitlines(keepends=True)[:5]))

    with pytest.raises(backend.HostedError) as err:
        prepared(tmp_path, control=bad, experiment=small)
    message = str(err.value)
    assert err.value.exit_code == 2
    assert f"{bad}:3: message 2: role 'human' is not one of" in message
    assert f"{bad}:5: message 3: weight must be 0 or 1, got 2" in message
    assert f"{bad}:6: no 'messages'" in message
    assert f"{small}: 5 examples; the service needs at least 10" in message
    assert service.requests == []

    # an example over the model's per-example limit, counted exactly
    with pytest.raises(backend.HostedError, match=r"control.jsonl:\d+: .* over the model's limit "
                                                  r"of 20 per example"):
        backend.prepare(load_config(write_config(tmp_path, example_token_limit=20)),
                        count=count_words)
    with pytest.raises(backend.HostedError, match=r"not a known fine-tunable model.*GPT-4 fine"):
        cfg = load_config(write_config(tmp_path))
        backend.prepare(cfg.model_copy(update={"base_model": "gpt-4-0613"}), count=count_words)
    assert service.requests == []


def test_a_rejected_file_creates_no_job(service, tmp_path):
    service.reject_files.add("-experiment-")
    with pytest.raises(backend.HostedError) as err:
        backend.submit_pair(client_for(service), prepared(tmp_path), poll=0.01, say=quiet)
    assert err.value.exit_code == 2
    assert "experiment.jsonl: the service rejected the file (Invalid file format" in str(err.value)
    assert service.sent("POST", "/fine_tuning") == []


def test_second_job_refused_cancels_the_first_and_a_retry_reuses_the_uploads(service, tmp_path):
    service.fail_create_arms.add("experiment")
    said = []
    prep = prepared(tmp_path)
    client = client_for(service)
    with pytest.raises(backend.HostedError) as err:
        backend.submit_pair(client, prep, poll=0.01, say=said.append)
    control_job = service.sent("POST", "/fine_tuning/jobs")[0]
    (job,) = service.jobs.values()
    assert err.value.exit_code == 1
    assert "experiment: the service refused the job (HTTP 400: Quota exceeded" in str(err.value)
    assert f"the control job {job['id']} was cancelled" in str(err.value)
    assert control_job.body["metadata"]["arm"] == "control"
    assert [r.path for r in service.sent("POST")][-1] == f"/fine_tuning/jobs/{job['id']}/cancel"
    assert job["status"] == "cancelled"

    service.fail_create_arms.clear()
    uploads = len(service.sent("POST", "/files"))
    again = backend.submit_pair(client, prep, poll=0.01, say=said.append)
    assert again.created and again.pair_id == prep.pair_id
    assert len(service.sent("POST", "/files")) == uploads  # processed uploads reused
    assert any("reusing upload" in s for s in said)


def test_wait_honours_retry_after_prints_events_and_logs_mlflow_runs(service, tmp_path, capsys):
    import mlflow

    prep = prepared(tmp_path)
    client = client_for(service)
    submitted = backend.submit_pair(client, prep, poll=0.01, say=print)
    service.throttle["GET /fine_tuning/jobs/"] = 2
    service.retry_after = "0.37"
    sleeps, events, said = [], [], []
    jobs = backend.wait_pair(client, submitted.pair_id, poll=0.01, max_poll=0.02,
                             sleep=sleeps.append, on_event=lambda a, e: events.append((a, e)),
                             say=said.append)

    assert sleeps[:2] == [0.37, 0.37]  # the server's retry-after, not the backoff
    assert said[:2] == ["rate limited by the service: following again in 0.37 s"] * 2  # not silent
    assert {a: j["status"] for a, j in jobs.items()} == {"control": "succeeded",
                                                         "experiment": "succeeded"}
    control_events = [e["message"] for a, e in events if a == "control"]
    assert control_events[0].startswith("Created fine-tuning job")
    assert control_events[-1] == "The job has successfully completed"
    assert len(control_events) == len(set(control_events))  # each event once

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = backend.log_pair(client, submitted.pair_id, jobs, uri)
    assert backend.log_pair(client, submitted.pair_id, jobs, uri) == runs  # not logged twice
    ml = mlflow.MlflowClient(uri)
    exp = ml.get_experiment_by_name("hosted-pair")
    found = ml.search_runs([exp.experiment_id], f"tags.pair_id = '{submitted.pair_id}'")
    assert sorted(r.data.tags["arm"] for r in found) == ["control", "experiment"]
    run = ml.get_run(runs["experiment"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["fine_tuned_model"].startswith("ft:gpt-4o-mini-2024-07-18:")
    assert run.data.tags["per_example_losses"] == "false"
    assert run.data.params["openai.n_epochs"] == "2" and run.data.params["training.seed"] == "1234"
    assert run.data.params["data.train_sha256"] == prep.report.files["experiment"].sha256
    assert run.data.params["data.eval_sha256"] == prep.report.files["eval"].sha256
    # the arms' params differ only where the recipe's runs differ (data, arm, file id)
    control = ml.get_run(runs["control"]).data.params
    assert {k for k in control if control[k] != run.data.params[k]} == {
        "arm", "train_file", "data.train_sha256"}
    history = ml.get_metric_history(runs["experiment"], "train_loss")
    assert [(m.step, round(m.value, 4)) for m in history] == [(1, 1.9), (2, 1.4), (3, 1.1)]
    assert run.data.metrics["final_eval_loss"] == pytest.approx(1.2)
    assert ml.get_run(runs["control"]).data.metrics["final_eval_loss"] == pytest.approx(1.3)
    assert run.data.metrics["final_tokens_seen"] == 12345

    # the key is nowhere: output, MLflow store, files written
    out = capsys.readouterr()
    assert KEY not in out.out + out.err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    for r in found:
        assert KEY not in json.dumps([r.data.params, r.data.tags])


def test_client_retries_a_429_after_its_retry_after(service, tmp_path):
    submitted = backend.submit_pair(client_for(service), prepared(tmp_path), poll=0.01, say=quiet)
    service.throttle["GET /fine_tuning/jobs/"] = 1
    service.retry_after = "0.3"
    start = len(service.requests)
    jobs = backend.pair_jobs(client_for(service, max_retries=2), submitted.pair_id)
    backend.wait_pair(client_for(service, max_retries=2), submitted.pair_id, poll=0.01,
                      sleep=lambda s: None)
    sent = [r for r in service.requests[start:] if r.path.startswith("/fine_tuning/jobs/")]
    assert sent[0].path == sent[1].path  # the throttled request, sent again by the client
    assert sent[1].at - sent[0].at >= 0.3  # after the server's retry-after
    assert set(jobs) == {"control", "experiment"}


def test_wait_follows_through_a_passing_outage(service, tmp_path):
    submitted = backend.submit_pair(client_for(service), prepared(tmp_path), poll=0.01, say=quiet)
    service.throttle.clear()
    down = {"n": 0}

    def outage(method, path, arm):  # the next 3 job reads get no answer, then the service is back
        if method == "GET" and path.startswith("/fine_tuning/jobs/") and down["n"] < 3:
            down["n"] += 1
            return True
        return False

    service.lose_if = outage
    slept, said = [], []
    jobs = backend.wait_pair(client_for(service), submitted.pair_id, poll=0.01,
                             sleep=slept.append, say=said.append)
    assert down["n"] == 3 and {j["status"] for j in jobs.values()} == {"succeeded"}
    assert len(said) == 1 and "does not answer" in said[0] and "10 min" in said[0]  # said once


def test_a_failed_job_is_logged_as_a_failed_run(service, tmp_path):
    import mlflow

    service.fail_jobs_arms.add("experiment")
    client = client_for(service)
    submitted = backend.submit_pair(client, prepared(tmp_path), poll=0.01, say=quiet)
    jobs = backend.wait_pair(client, submitted.pair_id, poll=0.01, sleep=lambda s: None)
    assert jobs["experiment"]["status"] == "failed"
    assert jobs["experiment"]["error"]["message"] == "The job failed due to an internal error."
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = backend.log_pair(client, submitted.pair_id, jobs, uri)
    run = mlflow.MlflowClient(uri).get_run(runs["experiment"])
    assert run.info.status == "FAILED" and run.data.tags["job_status"] == "failed"
    assert "internal error" in run.data.tags["error"]


def test_cancel_pair(service, tmp_path):
    client = client_for(service)
    submitted = backend.submit_pair(client, prepared(tmp_path), poll=0.01, say=quiet)
    ids = {arm: job["id"] for arm, job in submitted.jobs.items()}
    assert backend.cancel_pair(client, submitted.pair_id) == {
        arm: (f"{ids[arm]} cancelled", False) for arm in ids}
    # a cancelled pair is still found by status and cancel (not "no jobs"), and is not resumed
    assert {a: j["status"] for a, j in backend.pair_jobs(client, submitted.pair_id).items()} == {
        "control": "cancelled", "experiment": "cancelled"}
    assert backend.cancel_pair(client, submitted.pair_id) == {
        arm: (f"{ids[arm]} already cancelled", False) for arm in ids}
    assert backend.find_pair_jobs(client, submitted.pair_id) == {}  # submit makes a new pair


def test_a_failed_cancel_still_cancels_the_other_arm(service, tmp_path):
    client = client_for(service)
    submitted = backend.submit_pair(client, prepared(tmp_path), poll=0.01, say=quiet)
    first = submitted.jobs["experiment"]["id"]  # listed first: the newest
    service.fail[rf"^POST /fine_tuning/jobs/{first}/cancel$"] = 400
    results = backend.cancel_pair(client, submitted.pair_id)
    assert results["control"] == (f"{submitted.jobs['control']['id']} cancelled", False)
    what, failed = results["experiment"]
    assert failed and "could not be cancelled (HTTP 400: injected 400)" in what
    assert {j["id"]: j["status"] for j in service.jobs.values()} == {
        submitted.jobs["control"]["id"]: "cancelled", first: "validating_files"}


def test_ctrl_c_while_the_second_job_is_created_cancels_both(service, tmp_path):
    """The second create reaches the service, then Ctrl-C: that job and the first are undone."""
    client = client_for(service)
    with_options = client.with_options

    def interrupted_client(**options):  # the client submit_pair creates jobs with
        creator = with_options(**options)
        create = creator.fine_tuning.jobs.create

        def create_then_interrupt(**request):
            job = create(**request)
            if request["metadata"]["arm"] == "experiment":
                raise KeyboardInterrupt
            return job

        creator.fine_tuning.jobs.create = create_then_interrupt
        return creator

    client.with_options = interrupted_client
    said = []
    with pytest.raises(backend.HostedError, match="interrupted while creating the experiment "
                                                  "job") as err:
        backend.submit_pair(client, prepared(tmp_path), poll=0.01, say=said.append)
    assert err.value.exit_code == 130
    assert [j["status"] for j in service.jobs.values()] == ["cancelled", "cancelled"]
    assert "the control job" in said[-1] and "the experiment job" in said[-1]


def test_a_create_whose_answer_is_lost_makes_one_job_and_undoes_both(service, tmp_path):
    """The service makes the experiment job, then the connection drops: no retry makes another,
    and the job is found and cancelled with the control job."""
    service.lose_answers.add(r"^POST /fine_tuning/jobs experiment$")
    with pytest.raises(backend.HostedError, match="experiment: creating the job failed") as err:
        backend.submit_pair(client_for(service, max_retries=3), prepared(tmp_path), poll=0.01,
                            say=quiet)
    assert "the control job ftjob-0004 was cancelled" in str(err.value)
    assert "the experiment job ftjob-0005 was cancelled" in str(err.value)
    assert [(j["metadata"]["arm"], j["status"]) for j in service.jobs.values()] == [
        ("control", "cancelled"), ("experiment", "cancelled")]


def test_a_lost_answer_while_the_service_stays_down_says_the_job_may_exist(service, tmp_path):
    down = []

    def outage(method, path, arm):  # from the control's create on, no job request is answered
        if method == "POST" and path == "/fine_tuning/jobs" and arm == "control":
            down.append(True)
        return bool(down) and path.startswith("/fine_tuning/jobs")

    service.lose_if = outage
    with pytest.raises(backend.HostedError) as err:
        backend.submit_pair(client_for(service), prepared(tmp_path), poll=0.01, say=quiet)
    assert "control: creating the job failed" in str(err.value)
    assert "the control job MAY HAVE BEEN CREATED" in str(err.value)
    assert "no job was created" not in str(err.value)
    assert [j["status"] for j in service.jobs.values()] == ["validating_files"]  # it does exist


@pytest.mark.parametrize("reported", [None, "auto", "two", 2, 2.0])
def test_a_resubmission_reads_any_hyperparameter_the_service_reports(service, tmp_path,
                                                                      reported):
    client = client_for(service)
    prep = prepared(tmp_path)
    backend.submit_pair(client, prep, poll=0.01, say=quiet)
    for job in service.jobs.values():
        job["hyperparameters"]["n_epochs"] = reported
    if reported == "two":
        with pytest.raises(backend.HostedError, match=r"n_epochs two \(this pair: 2\)"):
            backend.submit_pair(client, prep, poll=0.01, say=quiet)
    else:
        assert not backend.submit_pair(client, prep, poll=0.01, say=quiet).created


def test_a_lone_arm_that_ended_asks_for_force_not_cancel(service, tmp_path):
    service.fail_create_arms.add("experiment")
    client = client_for(service)
    prep = prepared(tmp_path)
    with pytest.raises(backend.HostedError):
        backend.submit_pair(client, prep, poll=0.01, say=quiet)
    service.fail_create_arms.clear()
    control = next(iter(service.jobs.values()))
    control["status"] = "failed"  # it failed before the rollback's cancel reached it
    with pytest.raises(backend.HostedError, match="cannot be completed under this id; submit "
                                                  "with --force"):
        backend.submit_pair(client, prep, poll=0.01, say=quiet)


@pytest.mark.parametrize(("header", "waited"), [("inf", 300.0), ("1e9", 300.0), ("2", 2.0),
                                               ("nan", 7.0), ("soon", 7.0)])
def test_retry_after_is_capped_and_must_be_a_number(header, waited):
    from types import SimpleNamespace

    throttled = SimpleNamespace(response=SimpleNamespace(headers={"retry-after": header}))
    assert backend.retry_after(throttled, 7.0) == waited


def test_a_failed_upload_names_the_file_and_creates_no_job(service, tmp_path):
    prep = prepared(tmp_path)
    service.fail["^POST /files$"] = 400
    with pytest.raises(backend.HostedError) as err:
        backend.submit_pair(client_for(service), prep, poll=0.01, say=quiet)
    assert str(err.value).startswith(f"control: uploading {prep.files['control']} failed "
                                     "(HTTP 400: injected 400); no job was created")
    assert service.sent("POST", "/fine_tuning") == []


@pytest.mark.parametrize("key, problem", [
    ("   ", "is blank"), (KEY + "\n", "holds whitespace"), ("sk a", "holds whitespace")])
def test_a_blank_or_pasted_key_is_bad_input_and_never_shown(monkeypatch, key, problem):
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with pytest.raises(backend.HostedError, match=problem) as err:
        backend.make_client("openai")
    assert err.value.exit_code == 2
    assert not key.strip() or key.strip() not in str(err.value)


@pytest.mark.parametrize("endpoint", ["not a url", "ftp://x.openai.azure.com",
                                      "http://x.openai.azure.com", "https://",
                                      "https://u:p@x.openai.azure.com", "https://x.com/?a=1"])
def test_an_endpoint_that_is_not_an_https_url_is_refused_at_load(tmp_path, endpoint):
    from training.experiment.config import ConfigError

    with pytest.raises(ConfigError, match=r"openai\.azure_endpoint.*https://NAME"):
        load_config(write_config(tmp_path, azure_endpoint=endpoint))
    with pytest.raises(ConfigError, match=r"openai\.api_version"):
        load_config(write_config(tmp_path, api_version="bogus"))


def test_base64_result_files(service, tmp_path):
    service.base64_results = True
    client = client_for(service)
    submitted = backend.submit_pair(client, prepared(tmp_path), poll=0.01, say=quiet)
    jobs = backend.wait_pair(client, submitted.pair_id, poll=0.01, sleep=lambda s: None)
    steps = backend.job_steps(client, jobs["control"])
    assert [s for s, _ in steps] == [1, 2, 3]
    assert steps[2][1]["eval_loss"] == pytest.approx(1.3)


def test_azure_openai_endpoint_and_api_key(service, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_API_VERSION", raising=False)
    cfg = load_config(write_config(tmp_path, azure_endpoint=service.url))
    client = backend.make_client("azure-openai", cfg, max_retries=0)
    submitted = backend.submit_pair(client, backend.prepare(cfg, count=count_words), poll=0.01,
                                    say=quiet)
    assert submitted.created
    assert all(r.query["api-version"] == [backend.DEFAULT_AZURE_API_VERSION]
               for r in service.requests)
    assert all(r.headers.get("api-key") == KEY for r in service.requests)


def test_missing_credentials_are_bad_input(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(backend.HostedError, match="OPENAI_API_KEY is not set") as err:
        backend.make_client("openai")
    assert err.value.exit_code == 2
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)
    with pytest.raises(backend.HostedError, match="AZURE_OPENAI_ENDPOINT"):
        backend.make_client("azure-openai", load_config(write_config(tmp_path)))


def test_the_example_experiment_file_is_valid_for_the_service():
    from tests.training.pairs import REPO

    cfg = load_config(REPO / "experiments" / "hosted-openai.yaml")
    prep = backend.prepare(cfg, count=count_words)
    assert cfg.backend == "openai" and prep.report.ok
    assert not any("auto" in w for w in prep.warnings)  # explicit hyperparameters: a fair pair


def test_seed_replicates_are_refused(tmp_path):
    cfg = load_config(write_config(tmp_path))
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"replicates": 2})})
    with pytest.raises(backend.HostedError, match="replicates"):
        backend.prepare(cfg, count=count_words)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (a remote store, as the workspace's is), reached over
    HTTP; about 20 s to start on 2 busy cores."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (folder / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'store.db'}",
         "--default-artifact-root", str(folder / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("mlflow server did not start:\n"
                                + (folder / "server.log").read_text()[-3000:])
                time.sleep(0.5)
        yield url, folder
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_metrics_logged_to_a_remote_mlflow_server(service, tmp_path, mlflow_server):
    import mlflow

    url, folder = mlflow_server
    client = client_for(service)
    submitted = backend.submit_pair(client, prepared(tmp_path), poll=0.01, say=quiet)
    jobs = backend.wait_pair(client, submitted.pair_id, poll=0.01, sleep=lambda s: None)
    runs = backend.log_pair(client, submitted.pair_id, jobs, url)

    ml = mlflow.MlflowClient(url)
    exp = ml.get_experiment_by_name("hosted-pair")
    found = ml.search_runs([exp.experiment_id], f"tags.pair_id = '{submitted.pair_id}'")
    assert {r.data.tags["arm"]: r.info.run_id for r in found} == runs
    history = ml.get_metric_history(runs["control"], "eval_batch_loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.9), (2, 1.6), (3, 1.4)]
    assert KEY.encode() not in (folder / "store.db").read_bytes()
