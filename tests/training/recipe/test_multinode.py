"""Two nodes of eight GPUs: the world the job of `train submit` gives the recipe.

`train submit --dry-run` builds the job with azure.instance_count 2 and processes_per_node 8. Azure
ML's PyTorch distribution then starts 2 x 8 processes, one per GPU, and sets MASTER_ADDR and
MASTER_PORT (node 0), WORLD_SIZE and NODE_RANK per node, RANK and LOCAL_RANK per process; no
torchrun. This test starts those 16 processes here, from the job's own code snapshot with the job's
environment variables, and has each one report what the recipe reads (its rank, the world size,
whether it is the writer) and join the process group as the Trainer does (gloo instead of NCCL).
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
from tests.training.pairs import write_experiment
from training.cli import main

PROBE = """
import json, os, sys
import torch.distributed as dist
from training.recipe import train as recipe
from training.experiment.config import load_config
from training.plan.hardware import vm_size
from training.plan.memory import check_vm, model_shape

cfg = load_config(sys.argv[1])
plan = check_vm(cfg, vm_size(cfg.azure.vm_size), model_shape(cfg.base_model)).plan
dist.init_process_group("gloo")  # env:// from MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
ranks = [None] * dist.get_world_size()
dist.all_gather_object(ranks, (recipe.rank(), os.environ["NODE_RANK"], os.environ["LOCAL_RANK"]))
print(json.dumps({"rank": recipe.rank(), "world_size": recipe.world_size(),
                  "torch_rank": dist.get_rank(), "node": int(os.environ["NODE_RANK"]),
                  "local_rank": int(os.environ["LOCAL_RANK"]), "writer": recipe.rank() == 0,
                  "planned_gpus": plan.setup.gpus, "gathered": ranks}))
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_of_eight_give_the_recipe_a_world_of_sixteen(tmp_path, tiny_model_path):
    cfg = write_experiment(tmp_path, azure={"instance_count": 2, "processes_per_node": 8,
                                            "vm_size": "Standard_ND96amsr_A100_v4"})
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({**OUTPUTS, "gpu_vm_size": "Standard_ND96amsr_A100_v4"}))
    out = tmp_path / "jobs"
    result = CliRunner().invoke(main, ["submit", "--config", str(cfg), "--outputs-file",
                                       str(outputs), "--dry-run", "--out", str(out)])
    assert result.exit_code == 0, result.output
    job = yaml.safe_load(next(out.glob("*-control.yml")).read_text())
    nodes = job["resources"]["instance_count"]
    per_node = job["distribution"]["process_count_per_instance"]
    assert (job["distribution"]["type"], nodes, per_node) == ("pytorch", 2, 8)
    assert "torchrun" not in job["command"]  # Azure ML starts every process itself
    config_file = job["command"].split("--config ")[1].split()[0]

    port, world = free_port(), nodes * per_node
    procs = []
    for node in range(nodes):
        for local in range(per_node):
            env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
                   **job["environment_variables"], "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "NODE_RANK": str(node),
                   "RANK": str(node * per_node + local), "LOCAL_RANK": str(local),
                   "OMP_NUM_THREADS": "1",
                   "PAIRED_FINETUNE_CACHE": os.environ["PAIRED_FINETUNE_CACHE"]}
            procs.append(subprocess.Popen([sys.executable, "-c", PROBE, config_file],
                                          cwd=out / "code", env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    seen = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        seen.append(json.loads(stdout.strip().splitlines()[-1]))

    assert sorted(s["rank"] for s in seen) == list(range(world))
    assert all(s["world_size"] == world == s["planned_gpus"] for s in seen)
    assert all(s["torch_rank"] == s["rank"] for s in seen)  # one process group, ranks agree
    assert {(s["node"], s["local_rank"]) for s in seen} == {
        (n, k) for n in range(nodes) for k in range(per_node)}
    assert all(0 <= s["local_rank"] < per_node for s in seen)  # cuda:LOCAL_RANK exists
    assert sum(s["writer"] for s in seen) == 1  # one writer of the shared arm folder
    gathered = seen[0]["gathered"]
    assert [r for r, _node, _local in gathered] == list(range(world))
    assert all(s["gathered"] == gathered for s in seen)
