"""FSDP2 through the recipe: two processes on CPU (gloo), launched per process as Azure ML does.

A sharded checkpoint is written, both processes are killed (SIGKILL) after it, the same command
resumes from it, and the run ends exactly where an uninterrupted run ends: the same weights and the
same losses. The final model/ is the full model, loadable with from_pretrained on one machine.
CPU FSDP needs the test-only accelerate workaround in tests/training/fsdp_cpu.py.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.training.pairs import REPO, write_experiment
from training.experiment.config import ConfigError
from training.recipe.sharding import check_enabled, runtime_sharding


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg: Path, out: Path, env: dict, kill_at: int | None = None) -> list:
    """The recipe as 2 ranks, each its own process with RANK/WORLD_SIZE/LOCAL_RANK set; returns
    [(exit code, stdout, stderr)] per rank."""
    port = free_port()
    procs, logs = [], []
    for rank in range(2):
        penv = {**env, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
                "PAIRED_FINETUNE_NO_MLFLOW": "1"}
        if kill_at is not None:
            penv["PAIRED_FINETUNE_TEST_KILL_AT"] = str(kill_at)
        log = (out.parent / f"{out.name}-{len(list(out.parent.glob('*.log')))}-rank{rank}.log")
        logs.append(log)
        with open(log, "w") as f:  # files, not pipes: a full pipe would stall a collective
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.training.fsdp_cpu", "--config", str(cfg), "--arm",
                 "control", "--output-dir", str(out), "--pair-id", "fsdp"],
                cwd=REPO, env=penv, stdout=f, stderr=subprocess.STDOUT, text=True))
    return [(p.wait(timeout=400), log.read_text()) for p, log in zip(procs, logs, strict=True)]


def fsdp_experiment(folder: Path, method: str = "full", max_steps: int = 4) -> Path:
    cfg = write_experiment(folder, method=method, max_steps=max_steps, eval_every=max_steps,
                           save_every=2, batch_size=4)
    data = yaml.safe_load(cfg.read_text())
    data["training"]["sharding"] = "fsdp"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.mark.slow
def test_fsdp2_sharded_checkpoint_kill_and_resume_equals_uninterrupted(tiny_model_path,
                                                                         tmp_path):
    import torch

    cfg = fsdp_experiment(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    whole = tmp_path / "uninterrupted"
    for code, err in launch(cfg, whole, env):
        assert code == 0, err[-4000:]

    resumed = tmp_path / "killed"
    for code, _err in launch(cfg, resumed, env, kill_at=2):
        assert code == -9  # killed as step 3 began
    ckpt = resumed / "checkpoints" / "checkpoint-2"
    assert (ckpt / "COMPLETE").exists()
    shards = sorted(p.name for p in (ckpt / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # one shard per rank: really FSDP
    assert (ckpt / "optimizer_0").is_dir()
    written = [f.stat().st_mtime_ns for f in ckpt.rglob("*") if f.is_file() and f.name != "COMPLETE"]
    assert (ckpt / "COMPLETE").stat().st_mtime_ns >= max(written)  # after every rank's files
    assert not (ckpt / "model.safetensors").exists()
    assert not (resumed / "metrics.json").exists()

    results = launch(cfg, resumed, env)
    for code, err in results:
        assert code == 0, err[-4000:]
    assert "resuming from" in results[0][1] and "checkpoint-2" in results[0][1]

    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert (b["global_step"], b["train_loss"], b["eval_loss"]) == (
        a["global_step"], a["train_loss"], a["eval_loss"])
    wa, wb = weights(whole / "model"), weights(resumed / "model")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # the final model is whole (gathered from the shards) and loads on one machine
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(whole / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base.parameters())
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(model.state_dict()[name], base.state_dict()[name])  # it trained


@pytest.mark.slow
def test_fsdp2_lora_saves_the_gathered_adapter(tiny_model_path, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = fsdp_experiment(tmp_path, method="lora", max_steps=2)
    out = tmp_path / "lora"
    for code, err in launch(cfg, out, {**os.environ, "PYTHONPATH": str(REPO)}):
        assert code == 0, err[-4000:]
    assert (out / "checkpoints" / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()
    assert not (out / "model" / "model.safetensors").exists()  # the adapter, not the base
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    model = PeftModel.from_pretrained(base, out / "model")
    b = [t for n, t in model.named_parameters() if "lora_B" in n]
    assert b and any(t.abs().sum() > 0 for t in b)  # trained (lora_B starts at zero)
    assert torch.isfinite(torch.stack([t.abs().sum() for t in b])).all()


class FakeTrainer:
    def __init__(self, fsdp: bool):
        self.is_fsdp_enabled = fsdp


def test_fsdp_asked_but_ddp_set_up_is_refused():
    with pytest.raises(ConfigError, match="did not enable FSDP"):
        check_enabled(FakeTrainer(False), "fsdp")
    check_enabled(FakeTrainer(True), "fsdp")
    check_enabled(FakeTrainer(False), "none")


def test_auto_sharding_on_cpu_is_none(tmp_path):
    from training.experiment.config import load_config

    cfg = load_config(write_experiment(tmp_path))
    assert cfg.training.sharding == "auto"
    assert runtime_sharding(cfg, "tiny-llama", None, world=2, cuda=False, bf16=False) == "none"


def test_cpu_offload_needs_sharding(tmp_path):
    from training.experiment.config import load_config

    path = write_experiment(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["training"] |= {"sharding": "none", "cpu_offload": True}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"cpu_offload needs training\.sharding fsdp or auto"):
        load_config(path)
    data["training"]["sharding"] = "fsdp"
    path.write_text(yaml.safe_dump(data))
    assert load_config(path).training.cpu_offload
