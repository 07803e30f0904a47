"""The job `train submit` builds, run here the way Azure ML runs it.

`train submit --dry-run` writes the job YAML and the code snapshot; this test runs the job's own
command from the snapshot with its inputs and output folder substituted, as two processes started
the way Azure ML's PyTorch distribution starts them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT set per process; no torchrun), gloo on CPU, logging into the run Azure ML created for
the job (MLFLOW_RUN_ID), which already holds the job's inputs as params.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from tests.training.fake_azure import OUTPUTS
from tests.training.pairs import DATA, write_experiment
from training.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_submitted_job_runs_as_azure_ml_launches_it(tmp_path, tiny_model_path, tracking_env):
    import mlflow

    cfg = write_experiment(tmp_path, max_steps=6, eval_every=3, save_every=3, batch_size=4)
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(OUTPUTS))
    out = tmp_path / "jobs"
    result = CliRunner().invoke(main, ["submit", "--config", str(cfg), "--outputs-file",
                                       str(outputs), "--dry-run", "--out", str(out)])
    assert result.exit_code == 0, result.output
    job = yaml.safe_load(next(out.glob("*-control.yml")).read_text())
    assert job["distribution"]["type"] == "pytorch" and "torchrun" not in job["command"]

    arm_dir = tmp_path / "mount" / "pairs" / "control"
    command = (job["command"].replace("${{inputs.train}}", str(DATA / "control.jsonl"))
               .replace("${{inputs.eval}}", str(DATA / "eval.jsonl"))
               .replace("${{outputs.arm_dir}}", str(arm_dir)))
    assert "${{" not in command

    # Azure ML creates the run before the job starts: its name is the job's, its inputs params.
    uri = tracking_env["MLFLOW_TRACKING_URI"]
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment(job["experiment_name"])
    run = client.create_run(experiment_id, run_name=job["name"])
    client.log_param(run.info.run_id, "train", "azureml:control-train:1")
    client.log_param(run.info.run_id, "arm", "set-by-the-service")  # a clash: must not fail

    port = free_port()
    procs = []
    for rank in range(2):
        env = {**tracking_env, **job["environment_variables"], "RANK": str(rank),
               "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "MLFLOW_RUN_ID": run.info.run_id,
               "MLFLOW_EXPERIMENT_ID": experiment_id, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": ""}
        procs.append(subprocess.Popen([sys.executable, *command.split()[1:]], cwd=out / "code",
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    results = [p.communicate(timeout=400) for p in procs]
    for p, (_stdout, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr[-4000:]

    metrics = json.loads((arm_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 6
    assert (arm_dir / "model").is_dir()
    # the job's own run: no second or nested run, tags and params of the recipe in it
    runs = client.search_runs([experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id]
    logged = client.get_run(run.info.run_id)
    assert logged.data.tags["pair_id"] == job["tags"]["pair_id"]
    assert logged.data.tags["arm"] == "control"
    assert logged.data.params["world_size"] == "2"
    assert logged.data.params["arm"] == "set-by-the-service"
    assert logged.data.params["recipe.arm"] == "control"
    assert logged.data.params["code_version"] == job["environment_variables"][
        "PAIRED_FINETUNE_CODE_VERSION"]
    assert "eval_loss" in logged.data.metrics
    # the snapshot's own package ran, not the repository's
    assert os.path.isfile(out / "code" / "training" / "recipe" / "__main__.py")
