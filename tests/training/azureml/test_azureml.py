"""`train submit/status/logs/cancel` through the real MLClient against a fake Azure ML transport.

Assertions are on the requests the SDK really sent: what one submission creates, that a broken
pair is rolled back, that nothing is sent for bad input or for a pair that already exists.
"""

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.training.fake_azure import OUTPUTS, FakeCredential, _error, _response
from training.cli import main

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "experiments" / "paired-comments.yaml"


from tests.training.conftest import HUB_COMMIT as PINNED  # noqa: E402


@pytest.fixture(autouse=True)
def _pinned(hub_cache):
    """submit pins the example's base model to the cached commit."""


def put_bodies(fake):
    return {r.path.rsplit("/", 1)[1]: r.body["properties"] for r in fake.sent("PUT", "/jobs/")}


def write_config(tmp_path, **changes):
    data = yaml.safe_load(CONFIG.read_text())
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    data["arms"] = {"control": {"train": str(tmp_path / "c.jsonl")},
                    "experiment": {"train": str(tmp_path / "e.jsonl")}}
    data["eval"] = str(tmp_path / "eval.jsonl")
    path = tmp_path / "pair.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_one_submission_sends_a_fair_pair(train, fake):
    result = train("submit")
    assert result.exit_code == 0, result.output
    bodies = put_bodies(fake)
    assert len(bodies) == 2
    (c_name, control), (e_name, experiment) = sorted(bodies.items())
    pair_id = c_name.removesuffix("-control")
    assert e_name == f"{pair_id}-experiment"
    assert pair_id in result.output and "ml.azure.com/runs/" + c_name in result.output

    # identical except the training data, names, display names and the arm
    assert control["inputs"]["train"]["uri"].endswith("/data/control-train/versions/1")
    assert experiment["inputs"]["train"]["uri"].endswith("/data/experiment-train/versions/1")
    assert control["inputs"]["eval"] == experiment["inputs"]["eval"]
    assert control["outputs"]["arm_dir"] == {
        "uri": f"azureml://datastores/training_data/paths/pairs/{pair_id}/control/",
        "mode": "ReadWriteMount", "jobOutputType": "uri_folder"}
    assert control["tags"]["arm"] == "control" and experiment["tags"]["arm"] == "experiment"
    assert control["command"].replace("--arm control", "--arm X") == \
        experiment["command"].replace("--arm experiment", "--arm X")
    for key in ("inputs", "outputs", "tags", "displayName", "command", "codeId"):
        control.pop(key), experiment.pop(key)
    assert control == experiment
    assert control["distribution"] == {"processCountPerInstance": 1, "distributionType": "PyTorch"}
    assert control["resources"]["instanceCount"] == 1
    assert control["resources"]["shmSize"] == "16g"
    assert control["computeId"].endswith("/computes/gpu-cluster")
    assert control["environmentId"].endswith("/environments/paired-finetune-train/versions/abc123")
    assert control["experimentName"] == "paired-comments"
    # one code snapshot for both: the same content hash was looked up, and nothing uploaded
    assert len(set(fake.code_hashes)) == 1 and len(fake.code_hashes) == 2
    assert not fake.sent("POST", "startPendingUpload")


def test_tags_timeout_and_multi_node(train, fake, tmp_path):
    cfg = write_config(tmp_path, **{"azure.max_run_minutes": 120, "azure.instance_count": 2,
                                    "azure.processes_per_node": 8, "budget_usd": 1000})
    eight = tmp_path / "eight-gpus.json"
    eight.write_text(json.dumps({**OUTPUTS, "gpu_vm_size": "Standard_ND96amsr_A100_v4"}))
    result = train("submit", "--outputs-file", str(eight), config=cfg)
    assert result.exit_code == 0, result.output
    body = next(iter(put_bodies(fake).values()))
    assert body["limits"] == {"timeout": "PT2H", "jobLimitsType": "Command"}
    assert body["distribution"]["processCountPerInstance"] == 8
    assert body["resources"]["instanceCount"] == 2
    assert body["computeId"].endswith("/computes/gpu-cluster")
    assert "torchrun" not in body["command"]
    assert set(body["tags"]) >= {"pair_id", "arm", "config_sha256", "code_version"}


def test_submitting_again_creates_nothing(train, fake):
    first = train("submit")
    assert first.exit_code == 0
    puts = len(fake.sent("PUT"))
    again = train("submit")
    assert again.exit_code == 0, again.output
    assert len(fake.sent("PUT")) == puts
    assert "nothing created" in again.output


def test_a_missing_arm_from_a_broken_attempt_is_created(train, fake):
    assert train("submit").exit_code == 0
    experiment = next(n for n in fake.jobs if n.endswith("-experiment"))
    del fake.jobs[experiment]  # as if the process died between the two requests
    fake.requests.clear()
    result = train("submit")
    assert result.exit_code == 0, result.output
    assert [r.path.rsplit("/", 1)[1] for r in fake.sent("PUT")] == [experiment]


def test_second_job_failing_cancels_the_first(train, fake):
    fake.fail("PUT", r"/jobs/[^/]+-experiment$", 500)
    result = train("submit")
    assert result.exit_code == 1
    control = next(n for n in fake.jobs if n.endswith("-control"))
    assert fake.jobs[control]["properties"]["status"] == "Canceled"
    assert fake.sent("POST", f"/jobs/{control}/cancel")
    assert "never half a pair" in result.output and "Traceback" not in result.output
    # the same pair cannot be completed under the same names: say so, send nothing
    fake.requests.clear()
    again = train("submit")
    assert again.exit_code == 1 and "--force" in again.output
    assert not fake.sent("PUT")


def test_force_makes_a_new_pair(train, fake):
    assert train("submit").exit_code == 0
    names = set(fake.jobs)
    assert train("submit", "--force").exit_code == 0
    new = set(fake.jobs) - names
    assert len(new) == 2
    bodies = put_bodies(fake)
    new_pair = bodies[sorted(new)[0]]["tags"]["pair_id"]
    assert new_pair not in {bodies[n]["tags"]["pair_id"] for n in names}
    assert f"/paths/pairs/{new_pair}/" in bodies[sorted(new)[0]]["outputs"]["arm_dir"]["uri"]


def test_two_forced_pairs_in_the_same_second_are_two_pairs(train, fake, monkeypatch):
    import time

    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)  # the clock stands still
    for _ in range(2):
        result = train("submit", "--force")
        assert result.exit_code == 0 and "created 2 job(s)" in result.output, result.output
    pairs = {job["properties"]["tags"]["pair_id"] for job in fake.jobs.values()}
    assert len(fake.jobs) == 4 and len(pairs) == 2, pairs


@pytest.mark.parametrize("changes, args, message", [
    ({"azure.compute": "nope-cluster"}, [], "azure.compute"),
    ({"azure.instance_count": 0}, [], "azure.instance_count"),
    ({"azure.processes_per_node": 0}, [], "azure.processes_per_node"),
    ({"azure.shm_size": "huge"}, [], "azure.shm_size"),
    ({"training.learning_rate": -1}, [], "training.learning_rate"),
    ({"azure.bogus": 1}, [], "azure.bogus"),
    ({}, ["--pair-id", "../escape"], "--pair-id"),
    ({}, ["--pair-id", "x", "--force"], "exclude each other"),
    ({}, ["--dry-run"], "--dry-run --out"),
])
def test_bad_input_is_exit_2_with_no_request(train, fake, tmp_path, changes, args, message):
    result = train("submit", *args, config=write_config(tmp_path, **changes))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert fake.requests == []


def test_missing_environment_and_assets_are_exit_2(fake, tmp_path):
    for key, value, message in (("training_environment", None, "no environment"),
                                ("data_assets", {"control": {"name": "c", "version": "1"}},
                                 "experiment")):
        path = tmp_path / "out.json"
        path.write_text(json.dumps({**OUTPUTS, key: value}))
        result = CliRunner().invoke(main, ["submit", "--config", str(CONFIG), "--outputs-file",
                                           str(path)], obj={"azure_transport": fake,
                                                            "azure_credential": FakeCredential()})
        assert result.exit_code == 2 and message in result.output
    assert fake.requests == []


def test_dry_run_writes_loadable_jobs_and_sends_nothing(train, fake, tmp_path):
    from azure.ai.ml import load_job

    out = tmp_path / "jobs"
    result = train("submit", "--dry-run", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert fake.requests == []
    files = sorted(out.glob("*.yml"))
    assert [f.name.rsplit("-", 1)[1] for f in files] == ["control.yml", "experiment.yml"]
    jobs = [load_job(f) for f in files]
    assert jobs[0].inputs["train"].path.endswith("control-train:1")
    assert (out / "code" / "pair.yaml").is_file()
    shipped = yaml.safe_load((out / "code" / "pair.yaml").read_text())
    assert shipped["arms"]["control"]["train"] == "azureml:control-train:1"
    assert shipped["base_model_revision"] == PINNED  # both jobs load exactly this commit
    assert jobs[1].tags["base_model_revision"] == PINNED
    # the same --out for another config: the old jobs (which would read the new snapshot) go
    (out / "notes.yml").write_text("mine: true\n")  # not a job this tool wrote: kept
    other = write_config(tmp_path, **{"training.learning_rate": 1e-5})
    again = train("submit", "--dry-run", "--out", str(out), config=other)
    assert again.exit_code == 0 and again.output.count("removed ") == 2, again.output
    assert {f.name for f in out.glob("*.yml")} - {f.name for f in files} == {
        "notes.yml", *{f.name for f in out.glob("*-*.yml")} - {f.name for f in files}}
    assert not any(f.exists() for f in files)


def test_base_model_that_cannot_be_pinned_is_exit_2(train, fake, tmp_path):
    cfg = write_config(tmp_path, base_model="example-org/not-cached")
    result = train("submit", config=cfg)
    assert result.exit_code == 2 and "example-org/not-cached" in result.output
    local = write_config(tmp_path, base_model=str(tmp_path))
    result = train("submit", config=local)
    assert result.exit_code == 2 and "cannot be read by an Azure ML job" in result.output
    assert fake.requests == []


def test_code_snapshot_is_the_package_and_the_config(tmp_path):
    from training.azureml.snapshot import snapshot_files, stage_code

    code = stage_code(tmp_path / "code", "name: x\n")
    (code / "training" / "__pycache__").mkdir(exist_ok=True)
    (code / "training" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"0")
    for junk in ("runs/p/model.bin", ".venv/bin/python", "mlruns/0/meta.yaml", "tests/t.py",
                 ".git/HEAD", "mlflow.db"):
        (code / junk).parent.mkdir(parents=True, exist_ok=True)
        (code / junk).write_text("x")
    files = snapshot_files(code)
    assert "pair.yaml" in files and "training/recipe/train.py" in files
    assert "training/assets/tiny_corpus.txt" in files
    assert all(f in ("pair.yaml", ".amlignore") or f.startswith("training/") for f in files)
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]


def test_wait_follows_both_jobs(train, fake, monkeypatch):
    polls = {"n": 0}
    real_get = fake._get_job

    def advancing(request, match):  # Queued -> Running -> Completed, one step per poll
        polls["n"] += 1
        job = fake.jobs.get(match["name"])
        if job is not None:
            order = ["Queued", "Running", "Completed"]
            current = job["properties"]["status"]
            if current in order[:-1] and polls["n"] > 2:
                job["properties"]["status"] = order[order.index(current) + 1]
        return real_get(request, match)

    fake.routes.insert(0, ("GET", r"/jobs/(?P<name>[^/]+)$", advancing))
    result = train("submit", "--wait", "--poll-seconds", "0")
    assert result.exit_code == 0, result.output
    assert "Running" in result.output and "both arms completed" in result.output


def test_a_ctrl_c_while_following_replicates_names_the_whole_pair(train, fake, tmp_path):
    polls = {"n": 0}
    real_get = fake._get_job

    def interrupt_while_polling(request, match):
        polls["n"] += 1
        if polls["n"] > 6:  # past the submission's own lookups: while following
            raise KeyboardInterrupt
        return real_get(request, match)

    replicated = write_config(tmp_path, **{"training.replicates": 2})
    assert train("submit", "--pair-id", "y", config=replicated).exit_code == 0
    fake.routes.insert(0, ("GET", r"/jobs/(?P<name>[^/]+)$", interrupt_while_polling))
    result = train("submit", "--pair-id", "y", "--wait", "--poll-seconds", "0", config=replicated)
    assert result.exit_code == 130, result.output
    assert "`train status y`, `train cancel y`" in result.output


def test_wait_rides_out_a_passing_failure_of_the_service(train, fake):
    assert train("submit").exit_code == 0
    for name in fake.jobs:
        fake.set_status(name, "Completed")
    gets = {"n": 0}
    real_get = fake._get_job

    def hiccup(request, match):  # the existence checks pass; then more 503s than the SDK retries
        gets["n"] += 1
        if 2 < gets["n"] <= 30:
            return _response(request, 503, _error("ServiceUnavailable", "try later"))
        return real_get(request, match)

    fake.routes.insert(0, ("GET", r"/jobs/(?P<name>[^/]+)$", hiccup))
    result = train("submit", "--wait", "--poll-seconds", "0")
    assert result.exit_code == 0 and "both arms completed" in result.output, result.output


def test_a_login_that_expires_while_following_says_the_jobs_keep_running(train, fake):
    assert train("submit", "--pair-id", "p7").exit_code == 0
    gets = {"n": 0}
    real_get = fake._get_job

    def expired(request, match):  # the existence checks pass, then the token is refused
        gets["n"] += 1
        if gets["n"] > 2:
            return _response(request, 401, _error("AuthenticationFailed", "token expired"))
        return real_get(request, match)

    fake.routes.insert(0, ("GET", r"/jobs/(?P<name>[^/]+)$", expired))
    result = train("submit", "--pair-id", "p7", "--wait", "--poll-seconds", "0")
    assert result.exit_code == 1, result.output
    assert "the jobs were submitted and keep running: `train status p7`" in result.output


def test_wait_exits_1_when_an_arm_fails(train, fake):
    assert train("submit").exit_code == 0
    for name in fake.jobs:
        fake.set_status(name, "Failed" if name.endswith("-experiment") else "Completed")
    result = train("submit", "--wait", "--poll-seconds", "0")
    assert result.exit_code == 1 and "Failed" in result.output
    again = train("submit")  # not "already submitted" with exit 0 after a failure
    assert again.exit_code == 1 and "did not complete: experiment (Failed)" in again.output
    assert "--arm experiment" in again.output and "--force" in again.output


def test_status_lists_pairs_and_shows_one(train, fake):
    assert train("submit").exit_code == 0
    pair_id = next(iter(fake.jobs)).rsplit("-", 1)[0]
    listing = train("status")
    assert listing.exit_code == 0 and pair_id in listing.output
    one = train("status", pair_id)
    assert one.exit_code == 0 and "Queued" in one.output and "control" in one.output
    unknown = train("status", "no-such-pair")
    assert unknown.exit_code == 2 and pair_id in unknown.output


def test_cancel_cancels_both_arms(train, fake):
    assert train("submit").exit_code == 0
    pair_id = next(iter(fake.jobs)).rsplit("-", 1)[0]
    result = train("cancel", pair_id)
    assert result.exit_code == 0, result.output
    assert {j["properties"]["status"] for j in fake.jobs.values()} == {"Canceled"}
    assert len(fake.sent("POST")) == 2
    again = train("cancel", pair_id)
    assert "already Canceled" in again.output and len(fake.sent("POST")) == 2
    assert train("cancel", "nope").exit_code == 2


def test_logs_stream_the_arm_until_it_ends(train, fake, capfd):
    assert train("submit").exit_code == 0
    pair_id = next(iter(fake.jobs)).rsplit("-", 1)[0]
    name = f"{pair_id}-experiment"
    fake.set_status(name, "Running")
    fake.run_statuses[name] = ["Running", "Completed"]
    fake.logs[name] = "step 10/100  loss 1.2345\n"
    result = train("logs", pair_id, "--arm", "experiment")
    assert result.exit_code == 0, result.output
    assert fake.sent("GET", f"/runs/{name}/details")
    assert train("logs", "nope").exit_code == 2


@pytest.mark.parametrize("status", ["Completed", "Failed"])
def test_logs_of_an_arm_that_has_ended_are_printed(train, fake, status):
    """The SDK's stream prints log lines only while a job runs: an ended job's log is read."""
    assert train("submit").exit_code == 0
    pair_id = next(iter(fake.jobs)).rsplit("-", 1)[0]
    name = f"{pair_id}-experiment"
    fake.set_status(name, status)
    fake.logs[name] = "step 10/100  loss 1.2345\nTraceback: CUDA out of memory\n"
    result = train("logs", pair_id, "--arm", "experiment")
    assert result.exit_code == (0 if status == "Completed" else 1), result.output
    assert "Traceback: CUDA out of memory" in result.output
    if status == "Failed":
        assert f"{name} did not complete (status Failed)" in result.output


def test_a_log_that_cannot_be_read_is_said_not_printed(train, fake):
    assert train("submit").exit_code == 0
    pair_id = next(iter(fake.jobs)).rsplit("-", 1)[0]
    fake.set_status(f"{pair_id}-experiment", "Completed")
    fake.routes.insert(0, ("GET", r"/logs/.*std_log.txt$", lambda request, match: _response(
        request, 403, {"error": {"code": "AuthenticationFailed", "message": "sig=SECRET1"}})))
    result = train("logs", pair_id, "--arm", "experiment")
    assert "could not read user_logs/std_log.txt (HTTP 403: its link has expired)" in (
        result.output), result.output
    assert "AuthenticationFailed" not in result.output and "SECRET1" not in result.output


# ----------------------------------------------------------------------------- hostile cases
def test_a_rollback_that_cannot_cancel_says_so(train, fake):
    fake.fail("PUT", r"/jobs/[^/]+-experiment$", 400)
    fake.fail("POST", r"/cancel$", 400)
    result = train("submit")
    assert result.exit_code == 1
    control = next(n for n in fake.jobs if n.endswith("-control"))
    assert f"COULD NOT CANCEL {control}" in result.output and "train cancel" in result.output
    assert "never half a pair" not in result.output
    assert "submit again with `--force`" in result.output  # the cancelled name is used up


def test_ctrl_c_between_the_two_jobs_cancels_the_first(train, fake):
    def interrupt(request, match):
        raise KeyboardInterrupt

    fake.routes.insert(0, ("PUT", r"/jobs/[^/]+-experiment$", interrupt))
    result = train("submit")
    assert result.exit_code == 130, result.output
    control = next(n for n in fake.jobs if n.endswith("-control"))
    assert fake.jobs[control]["properties"]["status"] == "Canceled"
    assert "interrupted" in result.output


@pytest.mark.parametrize("arm", ["control", "experiment"])
def test_a_create_whose_answer_is_lost_is_looked_up_and_undone(train, fake, arm):
    """The service creates the job, then the connection resets (or times out) before the answer:
    the job in flight is found and cancelled with the other, never reported as not created."""
    from azure.core.exceptions import ServiceResponseError

    def create_then_lose(request, match):
        fake._put_job(request, match)
        raise ServiceResponseError("connection reset after send")

    fake.routes.insert(0, ("PUT", rf"/jobs/(?P<name>[^/]+-{arm})$", create_then_lose))
    result = train("submit")
    assert result.exit_code == 1, result.output
    assert {n.rsplit("-", 1)[1]: j["properties"]["status"] for n, j in fake.jobs.items()} == (
        {"control": "Canceled", "experiment": "Canceled"} if arm == "experiment"
        else {"control": "Canceled"})
    assert "never half a pair running" in result.output
    assert "this submission created no job" not in result.output


def test_completing_a_pair_on_other_compute_is_refused(train, fake, tmp_path):
    """The experiment job was never created (the process died between the two): completing the
    pair must run it where and how the control job ran, or the arms are not comparable."""
    assert train("submit", "--pair-id", "p3").exit_code == 0
    del fake.jobs["p3-experiment"]
    fake.requests.clear()
    other = write_config(tmp_path, **{"azure.environment": "other-env:7", "azure.shm_size": "1g"})
    result = train("submit", "--pair-id", "p3", config=other)
    assert result.exit_code == 2, result.output
    assert "p3-control ran with other settings" in result.output
    assert "(this pair: 'azureml:other-env:7')" in result.output
    assert "shm 16g" in result.output and "--force" in result.output
    assert not fake.sent("PUT")
    # the same settings complete it
    result = train("submit", "--pair-id", "p3")
    assert result.exit_code == 0 and len(fake.sent("PUT", "/jobs/")) == 1, result.output


def test_one_data_asset_named_twice_is_a_warning(fake, tmp_path):
    shared = {**OUTPUTS["data_assets"]}
    shared["experiment"] = shared["control"]
    shared["eval"] = shared["control"]
    outputs = tmp_path / "same.json"
    outputs.write_text(json.dumps({**OUTPUTS, "data_assets": shared}))
    result = CliRunner().invoke(main, ["submit", "--config", str(write_config(tmp_path)),
                                       "--outputs-file", str(outputs), "--dry-run", "--out",
                                       str(tmp_path / "jobs")],
                                obj={"azure_transport": fake, "azure_credential": FakeCredential()})
    assert result.exit_code == 0, result.output
    assert "both arms train on the same data asset azureml:control-train:1" in result.output
    assert "the control arm is scored on examples it trained on" in result.output


def test_jobs_of_an_older_version_are_checked_by_what_they_record(train, fake, tmp_path):
    """Jobs submitted before the run and data tags existed: their data versions are read from
    their inputs, and a pair missing an arm cannot be completed without knowing what ran."""
    from training.azureml.jobs import DATA_TAGS, RUN_TAGS

    assert train("submit", "--pair-id", "p6").exit_code == 0
    for job in fake.jobs.values():
        for tag in RUN_TAGS + DATA_TAGS:
            job["properties"]["tags"].pop(tag, None)
    again = train("submit", "--pair-id", "p6")
    assert again.exit_code == 0, again.output  # both there: reported, as before
    del fake.jobs["p6-experiment"]
    fake.requests.clear()
    result = train("submit", "--pair-id", "p6")
    assert result.exit_code == 2 and "compute not recorded (submitted by an older version" in (
        result.output), result.output
    assert not fake.sent("PUT")


def test_a_reused_pair_id_with_new_data_asset_versions_is_refused(fake, tmp_path):
    obj = {"azure_transport": fake, "azure_credential": FakeCredential()}
    config = str(write_config(tmp_path))
    for version in ("1", "2"):
        assets = {k: {**v, "version": version} for k, v in OUTPUTS["data_assets"].items()}
        outputs = tmp_path / f"v{version}.json"
        outputs.write_text(json.dumps({**OUTPUTS, "data_assets": assets}))
        result = CliRunner().invoke(main, ["submit", "--config", config, "--outputs-file",
                                           str(outputs), "--pair-id", "q"], obj=obj)
    assert result.exit_code == 2, result.output
    assert "train_data 'azureml:control-train:1' (this pair: 'azureml:control-train:2')" in (
        result.output)
    assert len(fake.sent("PUT", "/jobs/")) == 2  # the first submission's only


def test_the_undo_leaves_ended_jobs_and_another_submissions_job_alone(train, fake):
    assert train("submit", "--pair-id", "p4").exit_code == 0
    fake.set_status("p4-control", "Completed")  # an earlier attempt: its control finished
    del fake.jobs["p4-experiment"]
    fake.fail("PUT", r"/jobs/p4-experiment$", 500)
    result = train("submit", "--pair-id", "p4")
    assert result.exit_code == 1, result.output
    assert fake.jobs["p4-control"]["properties"]["status"] == "Completed"
    assert not fake.sent("POST", "/cancel")
    fake.routes.pop(0)

    def created_by_another(request, match):  # the other submission won the race: 409
        fake._put_job(request, match)
        return _response(request, 409, _error("Conflict", "job exists"))

    del fake.jobs["p4-control"]  # both arms missing now
    fake.routes.insert(0, ("PUT", r"/jobs/(?P<name>p4-experiment)$", created_by_another))
    result = train("submit", "--pair-id", "p4")
    # this submission made the control, the other the experiment: one complete pair, nothing undone
    assert result.exit_code == 0, result.output
    assert {n: j["properties"]["status"] for n, j in fake.jobs.items()} == {
        "p4-control": "Queued", "p4-experiment": "Queued"}


def test_bad_local_data_is_refused_before_any_request_without_a_budget(train, fake, tmp_path):
    from tests.training.pairs import DATA

    config = write_config(tmp_path, budget_usd=None)
    (tmp_path / "c.jsonl").write_text("not json\n")
    for name, source in (("e.jsonl", "experiment.jsonl"), ("eval.jsonl", "eval.jsonl")):
        (tmp_path / name).write_text((DATA / source).read_text())
    for extra in ([], ["--dry-run", "--out", str(tmp_path / "jobs")]):
        result = train("submit", *extra, config=config)
        assert result.exit_code == 2, result.output
        assert f"{tmp_path / 'c.jsonl'}:1: not valid JSON" in result.output
    assert not fake.sent("PUT")


def test_the_services_strings_are_never_read_as_markup(train, fake):
    assert train("submit", "--pair-id", "p5").exit_code == 0
    fake.jobs["p5-control"]["properties"]["tags"]["pair_id"] = "x[/bold]"
    fake.jobs["p5-experiment"]["properties"]["tags"]["arm"] = "[red]experiment"
    listing = train("status")
    assert listing.exit_code == 0 and "x[/bold]" in listing.output, listing.output
    one = train("status", "p5")
    assert one.exit_code == 0 and "[red]experiment" in one.output, one.output


def test_control_characters_from_the_service_never_reach_the_terminal(train, fake):
    assert train("submit", "--pair-id", "p6").exit_code == 0
    fake.jobs["p6-control"]["properties"]["tags"]["arm"] = "control\x1b[2J\x07"  # clear screen
    fake.jobs["p6-experiment"]["properties"]["tags"]["pair_id"] = "p6\x1b]0;owned\x07"
    for args in (("status",), ("status", "p6"), ("cancel", "p6")):
        result = train(*args)
        assert result.exit_code in (0, 1) and "\x1b" not in result.output, result.output
    assert "control\\x1b[2J\\x07" in train("status", "p6").output  # shown, escaped


def test_a_reused_pair_id_with_another_config_is_refused(train, fake, tmp_path):
    assert train("submit", "--pair-id", "p2").exit_code == 0
    del fake.jobs["p2-experiment"]
    fake.requests.clear()
    other = write_config(tmp_path, **{"training.learning_rate": 1e-5})
    result = train("submit", "--pair-id", "p2", config=other)
    assert result.exit_code == 2, result.output
    assert "exists but is not this pair's" in result.output and "config_sha256" in result.output
    assert not fake.sent("PUT")


@pytest.mark.parametrize("pair_id", ["P1", "x-sweep", "x-sweep-control", ""])
def test_pair_ids_that_would_collide_are_refused(train, fake, pair_id):
    result = train("submit", "--pair-id", pair_id)
    assert result.exit_code == 2 and "--pair-id" in result.output
    assert fake.requests == []


@pytest.mark.parametrize("command", [["status"], ["logs"], ["cancel"]])
@pytest.mark.parametrize("pair_id", ["../../x", "a b", "Upper", "x?api-version=1"])
def test_follow_commands_check_the_pair_id_before_any_request(train, fake, command, pair_id):
    result = train(*command, pair_id)
    assert result.exit_code == 2 and "PAIR" in result.output
    assert fake.requests == []


def test_cancel_finds_replicates_and_status_skips_sweeps(train, fake, tmp_path):
    assert train("submit", "--pair-id", "p3").exit_code == 0
    reps = write_config(tmp_path, **{"training.replicates": 2})
    assert train("submit", "--pair-id", "p3", config=reps).exit_code == 0
    assert len(fake.jobs) == 6
    fake.jobs["p3-sweep-control"] = json.loads(json.dumps(fake.jobs["p3-control"]))
    fake.jobs["p3-sweep-control"]["properties"]["tags"].update(
        pair_id="p3-sweep-control", sweep_of="p3")
    assert "p3-sweep-control" not in train("status").output
    result = train("cancel", "p3")
    assert result.exit_code == 0, result.output
    assert {n for n, j in fake.jobs.items() if j["properties"]["status"] == "Canceled"} == {
        "p3-control", "p3-experiment", "p3-r0-control", "p3-r0-experiment", "p3-r1-control",
        "p3-r1-experiment"}


def test_budget_that_cannot_be_checked_is_refused(train, fake, tmp_path):
    cfg = write_config(tmp_path, **{"azure.max_run_minutes": None, "budget_usd": 50})
    result = train("submit", config=cfg)
    assert result.exit_code == 1 and "cannot be checked" in result.output
    assert not fake.sent("PUT")
    assert train("submit", "--allow-over-budget", config=cfg).exit_code == 0


def test_processes_beyond_the_vms_gpus_are_exit_2_even_in_a_dry_run(train, fake, tmp_path):
    cfg = write_config(tmp_path, **{"azure.processes_per_node": 2, "budget_usd": None})
    for args in (["submit"], ["submit", "--dry-run", "--out", str(tmp_path / "d")]):
        result = train(*args, config=cfg)
        assert result.exit_code == 2 and "1 GPU(s) per node" in result.output
    assert fake.requests == []


def test_a_shared_eval_set_needs_the_eval_asset(fake, tmp_path):
    path = tmp_path / "out.json"
    assets = {k: v for k, v in OUTPUTS["data_assets"].items() if k != "eval"}
    path.write_text(json.dumps({**OUTPUTS, "data_assets": assets}))
    result = CliRunner().invoke(main, ["submit", "--config", str(CONFIG), "--outputs-file",
                                       str(path)], obj={"azure_transport": fake,
                                                        "azure_credential": FakeCredential()})
    assert result.exit_code == 2 and "evalAsset" in result.output
    assert fake.requests == []


def test_dry_run_out_folders_that_cannot_be_used(train, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    foreign = tmp_path / "foreign"
    (foreign / "code" / "training").mkdir(parents=True)
    (foreign / "code" / "training" / "mine.txt").write_text("keep me")
    for out, message in ((str(afile / "sub"), "cannot write there"),
                         (str(foreign), "did not write"), ("", "empty")):
        result = train("submit", "--dry-run", "--out", out)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
    assert (foreign / "code" / "training" / "mine.txt").read_text() == "keep me"
    again = tmp_path / "again"
    assert train("submit", "--dry-run", "--out", str(again)).exit_code == 0
    assert train("submit", "--dry-run", "--out", str(again)).exit_code == 0  # its own snapshot
