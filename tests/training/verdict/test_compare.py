"""`train compare` on real local pairs trained by the recipe on the tiny Llama (a few steps each),
and the report built from constructed runs where the answer is known."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.training.pairs import DATA, REPO, recipe_cmd, write_experiment
from training.verdict import compare, fairness, render, stats
from training.verdict.store import ArmRun

SHORT = {"max_steps": 4, "eval_every": 2, "save_every": 4}
# under pytest-xdist the whole module runs on one worker (KEEP_TOGETHER in tests/conftest.py):
# the pairs of `store` are trained once


def cli(env, *args, check=None):
    proc = subprocess.run([sys.executable, "-m", "training.cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)
    if check is not None and proc.returncode != check:
        raise AssertionError(f"exit {proc.returncode}, expected {check}:\n{proc.stdout[-3000:]}"
                             f"\n{proc.stderr[-3000:]}")
    return proc


def experiment(folder, replicates=1, **kw):
    path = write_experiment(folder, **SHORT, **kw)
    cfg = yaml.safe_load(path.read_text())
    cfg["training"]["replicates"] = replicates
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model_path):
    """One MLflow store with: a pair of two seed replicates (success criteria that fail), a pair
    whose arms train on the same data (criteria that pass), and an unfair pair (the experiment
    arm's run has another learning rate) whose experiment arm is trained last."""
    root = tmp_path_factory.mktemp("compare")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1", "OMP_NUM_THREADS": "1",
           # one code version for every run, whatever gets committed while the pairs train
           "PAIRED_FINETUNE_CODE_VERSION": "test"}
    out = root / "runs"
    from mlflow import MlflowClient

    for name in ("reps", "same", "unfair"):  # artifacts in the test's folder, not ./mlruns
        MlflowClient(env["MLFLOW_TRACKING_URI"]).create_experiment(
            name, artifact_location=(root / "artifacts" / name).as_uri())
    reps = experiment(root / "reps", replicates=2, name="reps",
                      success={"max_eval_loss": 1.0, "max_train_eval_gap": 100.0})
    run = cli(env, "run", "--config", str(reps), "--output-dir", str(out), check=0)
    same = experiment(root / "same", name="same", experiment=DATA / "control.jsonl",
                      success={"max_eval_loss": 100.0})
    cli(env, "run", "--config", str(same), "--output-dir", str(out), "--pair-id", "same-data",
        check=0)
    fair_cfg = experiment(root / "unfair-a", name="unfair")
    other_lr = experiment(root / "unfair-b", name="unfair", learning_rate=1e-3)
    subprocess.run(recipe_cmd(fair_cfg, out / "unfair" / "control", "control", "unfair-pair"),
                   env=env, cwd=REPO, check=True, capture_output=True, timeout=300)
    return {"env": env, "root": root, "out": out, "run": run,
            "reps": next(p.name for p in out.iterdir() if p.name.startswith("reps-")),
            "finish_unfair": lambda: subprocess.run(
                recipe_cmd(other_lr, out / "unfair" / "experiment", "experiment", "unfair-pair"),
                env=env, cwd=REPO, check=True, capture_output=True, timeout=300)}


def report(store, pair, *extra, check=None):
    proc = cli(store["env"], "compare", pair, "--format", "json", *extra, check=check)
    return json.loads(proc.stdout), proc.returncode


@pytest.mark.slow
def test_replicates_are_found_and_aggregated_and_the_json_is_complete(store):
    pair = store["reps"]
    rep_dirs = sorted(p.name for p in (store["out"] / pair).iterdir() if p.is_dir())
    assert rep_dirs == ["r0", "r1"]
    for rep in rep_dirs:  # per-example losses next to each arm's metrics
        lines = (store["out"] / pair / rep / "control" / "eval_examples.jsonl").read_text()
        assert len(lines.splitlines()) == 64

    rep, code = report(store, pair)
    assert code == 1  # max_eval_loss 1.0 fails
    assert {"schema", "pair_id", "experiment", "tracking_uri", "replicates", "fair",
            "unfair_params", "arms", "replicate_results", "paired", "seed_spread", "notes",
            "criteria", "cost_usd", "verdict"} == rep.keys()
    assert rep["schema"] == compare.SCHEMA and rep["pair_id"] == pair
    assert rep["replicates"] == 2 and rep["fair"] is True, rep["unfair_params"]
    r0, r1 = rep["replicate_results"]
    assert (r0["pair_id"], r1["pair_id"]) == (f"{pair}-r0", f"{pair}-r1")
    assert (r0["seed"], r1["seed"]) == (7, 8)  # seed, seed + 1
    for r in (r0, r1):
        for arm in ("control", "experiment"):
            h = r["arms"][arm]
            assert h["finished"] and h["steps"] == 4 and h["tokens_per_second"] > 0
            assert h["best_eval_loss"] <= h["eval_loss"]
            assert h["train_eval_gap"] == pytest.approx(h["eval_loss"] - h["train_loss"])
        assert r["paired"]["n"] == 64
    # overall = the mean over replicates; each arm's seed-to-seed spread is reported
    p = rep["paired"]
    assert p["mean_diff"] == pytest.approx((r0["paired"]["mean_diff"]
                                            + r1["paired"]["mean_diff"]) / 2)
    assert p["ci_low"] <= p["mean_diff"] <= p["ci_high"] and p["mde"] > 0
    spread = rep["seed_spread"]
    assert spread["replicates"] == 2 and spread["diffs"] == pytest.approx(
        [r0["paired"]["mean_diff"], r1["paired"]["mean_diff"]])
    loss = [r["arms"]["control"]["eval_loss"] for r in (r0, r1)]
    assert rep["arms"]["control"]["eval_loss_seed_sd"] == pytest.approx(np.std(loss, ddof=1))
    # the criteria: each with its value and result
    crit = {(c["name"], c["arm"]): c for c in rep["criteria"]}
    assert crit[("max_eval_loss", "control")]["passed"] is False
    assert crit[("max_eval_loss", "control")]["value"] == pytest.approx(np.mean(loss))
    assert crit[("max_train_eval_gap", "experiment")]["passed"] is True
    assert rep["verdict"]["criteria_passed"] is False and rep["verdict"]["exit_code"] == 1


@pytest.mark.slow
def test_train_run_ends_with_the_compare_table(store):
    err, out = store["run"].stderr, store["run"].stdout
    assert "replicate 2/2" in err  # progress on stderr; the verdict, a result, on stdout
    assert "Paired comparison" in out and "verdict:" in out and "Paired comparison" not in err
    assert "Seed-to-seed spread" in out
    assert re.search(rf"^pair {store['reps']} -> ", out, re.M), out  # the pair id, for $(...)
    for k in range(2):  # each replicate's summary is titled by its own pair id, as compare names it
        assert re.search(rf"^pair {store['reps']}-r{k} *$", err, re.M), err


@pytest.mark.slow
def test_per_example_losses_average_to_the_eval_loss(store):
    arm = store["out"] / store["reps"] / "r0" / "experiment"
    rows = [json.loads(line) for line in (arm / "eval_examples.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(64))
    weighted = sum(r["loss"] * r["tokens"] for r in rows) / sum(r["tokens"] for r in rows)
    eval_loss = json.loads((arm / "metrics.json").read_text())["eval_loss"]
    assert weighted == pytest.approx(eval_loss, rel=1e-3)


@pytest.mark.slow
def test_arms_trained_on_the_same_data_give_an_interval_around_zero(store):
    rep, code = report(store, "same-data")
    assert code == 0, rep["verdict"]  # fair, finished, max_eval_loss 100 passes
    p = rep["paired"]
    assert p["ci_low"] <= 0 <= p["ci_high"] and abs(p["mean_diff"]) < 1e-3
    assert rep["verdict"]["significant"] is False and rep["verdict"]["better"] is None
    assert rep["seed_spread"] is None and rep["replicates"] == 1


@pytest.mark.slow
def test_plot_is_written(store, tmp_path):
    png = tmp_path / "figs" / "compare.png"
    proc = cli(store["env"], "compare", store["reps"], "--plot", str(png))
    assert proc.returncode == 1
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.shape[0] > 400 and image.shape[1] > 800
    assert png.stat().st_size > 30_000 and image[..., :3].std() > 0.05  # not a blank canvas
    assert "Health of each arm" in proc.stdout and "FAIL" in proc.stdout


@pytest.mark.slow
def test_missing_arm_then_unfair_pair(store):
    # only the control arm has run: exit 2, saying what exists
    proc = cli(store["env"], "compare", "unfair-pair")
    assert proc.returncode == 2
    assert "no experiment run" in proc.stderr and "control" in proc.stderr
    assert "Traceback" not in proc.stderr
    store["finish_unfair"]()
    rep, code = report(store, "unfair-pair")
    assert code == 1 and rep["fair"] is False
    flagged = {d["param"]: d["values"] for d in rep["unfair_params"]}
    assert flagged["training.learning_rate"] == ["0.002", "0.001"]
    assert "data.train_sha256" not in flagged and "arm" not in flagged
    assert rep["verdict"]["trusted"] is False and "UNFAIR" in rep["verdict"]["summary"]
    table = cli(store["env"], "compare", "unfair-pair", "--format", "markdown").stdout
    assert "UNFAIR PAIR" in table and "training.learning_rate" in table


@pytest.mark.slow
def test_unknown_pair_and_the_list_of_pairs(store):
    proc = cli(store["env"], "compare", "no-such-pair")
    assert proc.returncode == 2 and store["reps"] in proc.stderr and "same-data" in proc.stderr
    listing = cli(store["env"], "compare", check=0).stdout
    assert store["reps"] in listing and "finished" in listing
    listed = json.loads(cli(store["env"], "compare", "--format", "json", check=0).stdout)
    assert {p["pair_id"] for p in listed["pairs"]} >= {store["reps"], "same-data"}


@pytest.fixture
def mlflow_server(store):
    """A real `mlflow server` on 127.0.0.1 over the module's store, as a workspace's would be."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_exe = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow_exe), "server", "--backend-store-uri", store["env"]["MLFLOW_TRACKING_URI"],
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_compare_through_the_stack_outputs_and_the_workspace_tracking_server(
        store, mlflow_server, tmp_path):
    from click.testing import CliRunner

    from tests.training.fake_azure import OUTPUTS, WORKSPACE, FakeAzureML, FakeCredential, _response
    from training.cli import main

    fake = FakeAzureML()
    asked = []

    def workspace(request, match):  # the workspace's MLflow: the test's server, over HTTP
        asked.append(match["name"])
        return _response(request, 200, {
            "id": fake._job_id("x").rsplit("/jobs/", 1)[0], "name": match["name"],
            "location": "eastus", "properties": {"mlFlowTrackingUri": mlflow_server}})

    fake.routes.insert(0, ("GET", r"/workspaces/(?P<name>[^/]+)$", workspace))
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(OUTPUTS))
    result = CliRunner().invoke(
        main, ["compare", store["reps"], "--outputs-file", str(outputs), "--format", "json"],
        obj={"azure_transport": fake, "azure_credential": FakeCredential()})
    assert asked == [WORKSPACE], result.output
    remote = json.loads(result.stdout)
    local, _ = report(store, store["reps"])
    assert result.exit_code == 1 and remote["tracking_uri"] == mlflow_server
    assert remote["paired"] == local["paired"] and remote["seed_spread"] == local["seed_spread"]
    # on Azure each run costs its duration x nodes x the VM size's price (the stack's GPU size)
    for rl, rr in zip(local["replicate_results"], remote["replicate_results"], strict=True):
        for arm in ("control", "experiment"):
            h = rr["arms"][arm]
            assert h["cost_usd"] == pytest.approx(h["wall_seconds"] / 3600 * 3.67)
            assert rl["arms"][arm]["cost_usd"] is None  # local runs: nothing to pay
            assert {**h, "cost_usd": None} == rl["arms"][arm]
    assert remote["cost_usd"] == pytest.approx(sum(
        r["arms"][a]["cost_usd"] for r in remote["replicate_results"] for a in ("control",
                                                                              "experiment")))


def test_bad_arguments_exit_2(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'none.db'}"}
    proc = cli(env, "compare", "p")
    assert proc.returncode == 2 and "no MLflow store" in proc.stderr
    assert not (tmp_path / "none.db").exists()
    proc = cli(env, "compare", "p", "--tracking-uri", "x", "--stack", "dev")
    assert proc.returncode == 2 and "at most one" in proc.stderr
    proc = cli(env, "compare", "p", "--plot", str(tmp_path / "a.pdf"))
    assert proc.returncode == 2 and "PNG" in proc.stderr


# ----------------------------------------------------------------------------- constructed runs
def arm_run(arm, losses, rep=0, **params):
    hashes = [f"h{i}" for i in range(len(losses))]
    base = {"training.seed": str(7 + rep), "training.learning_rate": "0.002",
            "data.eval_sha256": "e" * 64, "data.train_sha256": arm, "arm": arm,
            "success.max_eval_loss": "None", "budget_usd": "None"}
    return ArmRun(
        run_id=f"{arm}{rep}", experiment="x", arm=arm, replicate=rep, pair_id=f"p-r{rep}",
        status="FINISHED", start=0.0, end=60.0, params={**base, **params},
        metrics={"final_eval_loss": float(np.mean(losses)), "final_train_loss": 1.0,
                 "final_global_step": 10},
        curves={"train_loss": [(5, 2.0), (10, 1.0)], "eval_loss": [(10, float(np.mean(losses)))]},
        examples=[{"index": i, "sha256": h, "tokens": 10, "loss": float(x)}
                  for i, (h, x) in enumerate(zip(hashes, losses, strict=True))])


def test_a_known_shift_is_found_and_its_interval_covers_it():
    rng = np.random.default_rng(0)
    c = rng.gamma(3, 0.6, 300) + 1
    e = c - 0.2 + rng.normal(0, 0.15, 300)
    rep = compare.build({0: {"control": arm_run("control", c),
                             "experiment": arm_run("experiment", e)}}, "p", "sqlite://")
    p = rep["paired"]
    assert p["ci_low"] < -0.2 < p["ci_high"] and p["ci_high"] < 0
    assert rep["verdict"]["better"] == "experiment" and rep["verdict"]["exit_code"] == 0
    json.dumps(rep)  # JSON-able as it is


def test_an_arm_that_failed_is_not_judged_on_an_earlier_eval_loss():
    c = np.ones(40)
    failed = arm_run("experiment", c, **{"success.max_eval_loss": "9.0"})
    failed.status = "FAILED"  # diverged: its last logged eval loss is from before the blow-up
    rep = compare.build({0: {"control": arm_run("control", c, **{"success.max_eval_loss": "9.0"}),
                             "experiment": failed}}, "p", "u")
    judged = {c["arm"]: c["passed"] for c in rep["criteria"]}
    assert judged == {"control": True, "experiment": None}  # shown as "not checked"
    assert rep["verdict"]["criteria_passed"] is None and rep["verdict"]["exit_code"] == 1
    assert "not every run finished" in rep["verdict"]["summary"]


def test_different_eval_examples_or_no_shared_eval_set_are_not_paired():
    c = np.ones(40)
    exp_run = arm_run("experiment", c + 1)
    exp_run.examples[2]["sha256"] = "other"
    rep = compare.build({0: {"control": arm_run("control", c), "experiment": exp_run}}, "p", "u")
    assert rep["paired"] is None and not rep["fair"]
    assert any("differ" in n for n in rep["notes"])
    holdout = {"control": arm_run("control", c, **{"data.eval_sha256": ""}),
               "experiment": arm_run("experiment", c, **{"data.eval_sha256": ""})}
    rep = compare.build({0: holdout}, "p", "u")
    assert rep["paired"] is None and rep["fair"]
    assert "no shared eval set" in rep["notes"][0]


def test_arms_that_loaded_different_base_model_revisions_are_unfair():
    c = np.ones(40)
    rep = compare.build({0: {"control": arm_run("control", c, base_model_revision="a" * 40),
                             "experiment": arm_run("experiment", c, base_model_revision="b" * 40)}},
                        "p", "u")
    assert not rep["fair"]
    assert {d["param"]: d["values"] for d in rep["unfair_params"]} == {
        "base_model_revision": ["a" * 40, "b" * 40]}
    assert rep["verdict"]["exit_code"] == 1


@pytest.mark.parametrize(("budget", "passed"), [(1.0, True), (0.1, False)])
def test_azure_runs_cost_their_duration_at_the_vm_price_and_meet_the_budget(budget, passed):
    from tests.training.fake_azure import OUTPUTS
    from training.experiment.stack import parse_outputs

    c = np.ones(40)
    params = {"budget_usd": str(budget), "azure.instance_count": "2"}
    runs = {0: {"control": arm_run("control", c, **params),
                "experiment": arm_run("experiment", c + 0.1, **params)}}
    rep = compare.build(runs, "p", "azureml://", outputs=parse_outputs(OUTPUTS, "test"))
    # 60 s on 2 nodes of the stack's GPU size, Standard_NC24ads_A100_v4 at 3.67 USD per node hour
    assert rep["replicate_results"][0]["arms"]["control"]["cost_usd"] == pytest.approx(
        60 / 3600 * 2 * 3.67)
    assert rep["cost_usd"] == pytest.approx(2 * 60 / 3600 * 2 * 3.67)
    (crit,) = [c for c in rep["criteria"] if c["name"] == "budget_usd"]
    assert crit["passed"] is passed and crit["value"] == pytest.approx(rep["cost_usd"])
    assert rep["verdict"]["exit_code"] == (0 if passed else 1)
    # azure.vm_size in the file does not outprice the cluster that ran it (the budget's order)
    pricey = {**params, "azure.vm_size": "Standard_ND96amsr_A100_v4"}
    runs_pricey = {0: {a: arm_run(a, c, **pricey) for a in ("control", "experiment")}}
    same = compare.build(runs_pricey, "p", "azureml://", outputs=parse_outputs(OUTPUTS, "test"))
    assert same["replicate_results"][0]["arms"]["control"]["cost_usd"] == pytest.approx(
        60 / 3600 * 2 * 3.67)
    local = compare.build(runs, "p", "sqlite://")  # no stack: no cost, the budget not checked
    (crit,) = [c for c in local["criteria"] if c["name"] == "budget_usd"]
    assert crit["passed"] is None and local["cost_usd"] is None
    assert local["verdict"]["exit_code"] == 0


def test_a_plot_path_that_cannot_be_written_is_refused_first(tmp_path):
    from click.testing import CliRunner

    from training.cli import main

    a_file = tmp_path / "afile"
    a_file.write_text("")
    (tmp_path / "adir.png").mkdir()
    for plot, message in ((a_file / "x.png", "not a directory"),
                          (a_file / "sub" / "x.png", "a parent of it is a file"),
                          (tmp_path / "adir.png", "exists and is not a file")):
        result = CliRunner().invoke(main, ["compare", "p", "--tracking-uri", "http://127.0.0.1:9",
                                           "--plot", str(plot)])
        assert result.exit_code == 2 and message in result.output, result.output
    result = CliRunner().invoke(main, ["compare", "--plot", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "--plot draws one pair" in result.output


def test_a_bad_pair_id_sends_nothing_and_a_dead_store_is_a_failed_request(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from tests.training.fake_azure import OUTPUTS, FakeAzureML, FakeCredential
    from training.cli import main

    fake = FakeAzureML()
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(OUTPUTS))
    obj = {"azure_transport": fake, "azure_credential": FakeCredential()}
    result = CliRunner().invoke(main, ["compare", "x'y", "--outputs-file", str(outputs)], obj=obj)
    assert result.exit_code == 2 and "is not a pair id" in result.output
    assert fake.requests == []
    # --pulumi-dir as on every other --stack command (the stack is read from that folder)
    result = CliRunner().invoke(main, ["compare", "p", "--stack", "dev", "--pulumi-dir",
                                       str(tmp_path / "infra")], obj=obj)
    assert result.exit_code == 2 and str(tmp_path / "infra") in result.output, result.output
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    for args in (["p"], []):  # a verdict, and the list of pairs
        result = CliRunner().invoke(main, ["compare", *args, "--tracking-uri",
                                           "http://bob:PW123456@127.0.0.1:9"])
        assert result.exit_code == 1, result.output
        assert "cannot read the MLflow store http://127.0.0.1:9" in result.output
        assert "PW123456" not in result.output


@pytest.mark.parametrize("store", ["file-store", "not-a-database"])
def test_a_uri_that_names_no_store_is_one_line_and_exit_2(tmp_path, store):
    from click.testing import CliRunner

    from training.cli import main

    if store == "file-store":  # the classic ./mlruns, which this MLflow refuses
        uri = (tmp_path / "mlruns").as_uri()
    else:
        (tmp_path / "notes.txt").write_text("not sqlite\n")
        uri = f"sqlite:///{tmp_path / 'notes.txt'}"
    for args in (["p"], []):  # a verdict, and the list of pairs
        result = CliRunner().invoke(main, ["compare", *args, "--tracking-uri", uri])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: cannot read the MLflow store {uri}: ")
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


# ----------------------------------------------------------------------------- rows over max_seq_length
def dropped(arm, train_rows, train_lost, eval_lost=None, losses=None, **params):
    """An arm trained with long_examples: drop; its counts logged as the recipe logged them
    before they were always logged: only when one is non-zero."""
    counts = {} if not (train_lost or eval_lost) else {
        "data.train_too_long": str(train_lost), "data.eval_too_long": str(eval_lost or 0)}
    return arm_run(arm, np.ones(40) if losses is None else losses, **{
        "training.long_examples": "drop", "data.train_rows": str(train_rows),
        "data.eval_rows": "40", **counts, **params})


def pair(control, experiment, **kw):
    return compare.build({0: {"control": control, "experiment": experiment}}, "p", "u", **kw)


def test_rows_lost_to_max_seq_length_are_data_facts_shown_side_by_side():
    # 2% and 3.75% of each arm's rows dropped; the control logged no counts at all ('0' vs None)
    rep = pair(dropped("control", 300, 0), dropped("experiment", 320, 12))
    assert rep["fair"], rep["unfair_params"]
    facts = rep["replicate_results"][0]["data"]
    assert facts["control"]["train_lost"] == 0 and facts["control"]["eval_lost"] == 0
    assert facts["experiment"]["train_lost_share"] == pytest.approx(12 / 320)
    assert facts["experiment"]["long_examples"] == "drop"
    assert facts["experiment"]["eval_examples"] == 40
    md = render.markdown(rep)
    assert "Rows over max_seq_length" in md and "12 (3.8%)" in md
    rep = pair(dropped("control", 300, 6), dropped("experiment", 320, 12))
    assert rep["fair"] and rep["verdict"]["exit_code"] == 0


def test_a_shared_eval_set_treated_differently_or_a_skewed_cut_is_unfair():
    rep = pair(dropped("control", 300, 0, eval_lost=2), dropped("experiment", 320, 0))
    assert not rep["fair"]
    assert [d["values"] for d in rep["unfair_params"]] == [[2, 0]]
    assert "shared eval" in rep["unfair_params"][0]["param"]
    # 12.5% of the experiment's rows lost, none of the control's: more than SKEW_GAP apart
    rep = pair(dropped("control", 300, 0), dropped("experiment", 320, 40))
    assert not rep["fair"] and rep["verdict"]["exit_code"] == 1
    (d,) = rep["unfair_params"]
    assert "skewed" in d["param"] and d["values"] == [0.0, 0.125]
    assert 0.125 - 0.0 > fairness.SKEW_GAP > 12 / 320
    # without a shared eval set each arm's holdout is its own data: its losses differ freely
    holdout = {"data.eval_sha256": "", "training.eval_fraction": "0.1"}
    rep = pair(dropped("control", 300, 0, eval_lost=3, **holdout),
               dropped("experiment", 320, 0, **holdout))
    assert rep["fair"], rep["unfair_params"]
    assert rep["replicate_results"][0]["data"]["control"]["eval_rows"] == 30


def test_a_setting_or_a_param_of_no_known_class_still_makes_a_pair_unfair():
    rep = pair(dropped("control", 300, 0, **{"training.max_seq_length": "512"}),
               dropped("experiment", 320, 0, **{"training.max_seq_length": "1024",
                                                "some.new_param": "x"}))
    assert {d["param"]: d["values"] for d in rep["unfair_params"]} == {
        "training.max_seq_length": ["512", "1024"], "some.new_param": [None, "x"]}
    assert "(not logged)" in render.markdown(rep)  # not Python's None


# ----------------------------------------------------------------------------- too little data
def test_a_one_example_eval_set_draws_no_verdict_and_is_strict_json():
    c = arm_run("control", [2.0], **{"success.max_eval_loss": "9.0"})
    e = arm_run("experiment", [1.0], **{"success.max_eval_loss": "9.0"})
    e.curves["eval_loss"].append((11, float("nan")))
    e.metrics["final_tokens_per_second"] = float("inf")
    rep = pair(c, e)
    json.dumps(rep, allow_nan=False)  # null, never NaN
    p, v = rep["paired"], rep["verdict"]
    assert p["n"] == 1 and p["se"] is None and p["ci_low"] is None and p["mde"] is None
    assert p["excludes_zero"] is None and p["enough"] is False
    assert v["significant"] is False and v["better"] is None and v["drawn"] is False
    assert v["exit_code"] == 1 and "cannot be drawn" in v["summary"]
    assert "better" not in v["summary"].split("(")[0]
    assert {c["passed"] for c in rep["criteria"]} == {None}  # "not checked"
    assert v["criteria_passed"] is None
    assert any("fewer than" in n for n in rep["notes"])
    assert rep["arms"]["experiment"]["tokens_per_second"] is None
    assert "not checked" in render.markdown(rep)


def test_below_the_minimum_a_clear_shift_is_never_significant():
    c = np.linspace(2, 3, stats.MIN_EXAMPLES - 1)
    rep = pair(arm_run("control", c), arm_run("experiment", c - 0.5))
    assert rep["paired"]["ci_high"] < 0  # every example better, and still
    assert not rep["verdict"]["significant"] and rep["verdict"]["exit_code"] == 1
    c = np.linspace(2, 3, stats.MIN_EXAMPLES)
    rep = pair(arm_run("control", c), arm_run("experiment", c - 0.5))
    assert rep["verdict"]["better"] == "experiment" and rep["verdict"]["exit_code"] == 0


def test_two_replicates_say_their_interval_has_one_degree_of_freedom():
    rng = np.random.default_rng(3)
    c = rng.gamma(3, 0.6, 40) + 1
    runs = {k: {"control": arm_run("control", c + 0.01 * k, rep=k),
                "experiment": arm_run("experiment", c - 0.3 - 0.02 * k, rep=k)} for k in (0, 1)}
    rep = compare.build(runs, "p", "u")
    json.dumps(rep, allow_nan=False)
    s = rep["seed_spread"]
    assert s["df"] == 1 and s["t"] == pytest.approx(12.706, abs=1e-3)
    assert "1 degree of freedom" in rep["verdict"]["summary"]
    assert "1 degree of freedom" in render.markdown(rep)


def test_a_small_holdout_leaves_the_eval_loss_criteria_unchecked():
    small = {"data.eval_sha256": "", "training.eval_fraction": "0.1", "training.long_examples":
             "error", "data.train_rows": "50", "success.max_eval_loss": "9.0"}
    rep = pair(arm_run("control", np.ones(40), **small), arm_run("experiment", np.ones(40), **small))
    assert rep["replicate_results"][0]["data"]["control"]["eval_examples"] == 5
    assert [c["passed"] for c in rep["criteria"]] == [None, None]
    assert rep["verdict"]["drawn"] is False and rep["verdict"]["exit_code"] == 1
    no_criteria = {**small, "success.max_eval_loss": "None"}
    rep = pair(arm_run("control", np.ones(40), **no_criteria),
               arm_run("experiment", np.ones(40), **no_criteria))
    assert rep["verdict"]["drawn"] is True  # nothing left unjudged: the note says why
    assert any("fewer than" in n for n in rep["notes"])


def test_a_running_arm_has_no_per_example_losses_yet():
    c = np.ones(40)
    running = arm_run("experiment", c)
    running.status, running.examples = "RUNNING", None
    rep = compare.build({0: {"control": arm_run("control", c), "experiment": running}}, "p", "u")
    assert rep["paired"] is None
    assert any("not recorded yet: experiment still running" in n for n in rep["notes"])
