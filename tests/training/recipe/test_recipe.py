"""The recipe of one arm, run as it runs in a job: `python -m training.recipe` in a subprocess."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.pairs import REPO, read_events, recipe_cmd, write_experiment
from training.experiment.events import parse_event
from training.plan.hardware import choose_precision
from training.recipe.checkpoints import COMPLETE, latest_complete_checkpoint
from training.recipe.train import attention_backends, split_holdout

slow = pytest.mark.slow


# ----------------------------------------------------------------------------- pure helpers
@pytest.mark.parametrize(
    ("requested", "cuda", "bf16", "chosen"),
    [
        ("auto", False, False, "fp32"),     # CPU
        ("auto", True, True, "bf16"),       # A100 / H100
        ("auto", True, False, "fp16"),      # V100, T4
        ("fp32", True, True, "fp32"),
        ("bf16", False, False, "bf16"),     # CPU bf16 autocast is allowed when asked for
    ],
)
def test_precision_is_chosen_from_the_hardware(requested, cuda, bf16, chosen):
    assert choose_precision(requested, cuda=cuda, bf16_supported=bf16) == chosen


@pytest.mark.parametrize(("requested", "cuda", "bf16"), [("fp16", False, False), ("bf16", True, False)])
def test_precision_the_hardware_lacks_is_a_config_error(requested, cuda, bf16):
    from training.experiment.config import ConfigError

    with pytest.raises(ConfigError, match=r"training\.precision"):
        choose_precision(requested, cuda=cuda, bf16_supported=bf16)


def test_cuda_attention_leaves_out_cudnn_and_cpu_is_untouched():
    """cuDNN's SDPA re-plans for every new packed length (bench/README.md: 2.6x slower on an
    H100); the other backends stay on, and a CPU run changes nothing."""
    import torch

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        attention_backends(cuda=False)
        assert torch.backends.cuda.cudnn_sdp_enabled()
        attention_backends(cuda=True)
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled()
        assert torch.backends.cuda.mem_efficient_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_only_complete_checkpoints_are_resumed_from(tmp_path):
    for step, complete in ((10, True), (20, True), (30, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / COMPLETE).write_text("")
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-20"
    assert latest_complete_checkpoint(tmp_path / "missing") is None


def test_holdout_is_deterministic_and_disjoint():
    rows = [{"text": str(i)} for i in range(50)]
    train, held = split_holdout(rows, 0.1, seed=3)
    assert (train, held) == split_holdout(rows, 0.1, seed=3)
    assert len(held) == 5 and len(train) == 45
    assert not {r["text"] for r in held} & {r["text"] for r in train}


# ----------------------------------------------------------------------------- training runs
def sigterm_at(cfg_path, out, step: int, env) -> list[dict]:
    """Run the control arm, SIGTERM it once it reports `step`; its events from then on."""
    proc = subprocess.Popen(recipe_cmd(cfg_path, out, "control"), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
    for line in proc.stdout:
        if (parse_event(line) or {}).get("step", 0) >= step:
            proc.send_signal(signal.SIGTERM)
            break
    events = read_events(proc.stdout)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    return events


def run_recipe(cfg_path, out, arm="control", env=None, check=True):
    proc = subprocess.run(recipe_cmd(cfg_path, out, arm), capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"recipe exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def load_state(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    assert files, f"no weights in {model_dir}"
    state = {}
    for f in files:
        state.update(load_file(f))
    return state


@slow
def test_sigterm_checkpoints_and_resume_equals_uninterrupted(tiny_model_path, tmp_path, tracking_env):
    cfg = write_experiment(tmp_path, max_steps=40, eval_every=10, save_every=10)
    straight = tmp_path / "straight"
    run_recipe(cfg, straight, env=tracking_env)

    # Interrupted: SIGTERM once training is under way, well before the end.
    resumed = tmp_path / "resumed"
    events = sigterm_at(cfg, resumed, 12, tracking_env)
    assert events[-1]["event"] == "preempted"
    stopped_at = events[-1]["step"]
    assert 12 <= stopped_at < 40
    assert not (resumed / "metrics.json").exists()
    assert not (resumed / "model").exists()
    checkpoint = resumed / "checkpoints" / f"checkpoint-{stopped_at}"
    assert (checkpoint / COMPLETE).exists()
    run_id = (resumed / "mlflow_run_id").read_text()

    # A half-written checkpoint further on must be ignored, not resumed from.
    broken = resumed / "checkpoints" / "checkpoint-39"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"truncated")

    proc = run_recipe(cfg, resumed, env=tracking_env)
    assert f"resuming from {checkpoint}" in proc.stderr

    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, resumed))
    assert b["global_step"] == a["global_step"] == 40
    assert (b["train_loss"], b["eval_loss"]) == (a["train_loss"], a["eval_loss"])
    wa, wb = load_state(straight / "model"), load_state(resumed / "model")
    assert wa.keys() == wb.keys()
    import torch

    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ from uninterrupted"

    # The resumed arm continued its MLflow run: one run, metrics from both legs.
    import mlflow

    client = mlflow.MlflowClient(tracking_env["MLFLOW_TRACKING_URI"])
    assert (resumed / "mlflow_run_id").read_text() == run_id
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert min(steps) < stopped_at < max(steps) == 40


@slow
def test_lora_adapter_saves_and_reloads(tiny_model_path, tmp_path):
    cfg = write_experiment(tmp_path, method="lora", max_steps=12, eval_every=6, save_every=6,
                           learning_rate=5e-3, lora={"r": 4, "alpha": 8, "dropout": 0.0},
                           gradient_checkpointing=True)
    out = tmp_path / "arm"
    run_recipe(cfg, out, env={**os.environ, "PAIRED_FINETUNE_NO_MLFLOW": "1"})
    model_dir = out / "model"
    assert (model_dir / "adapter_config.json").exists()
    assert not (model_dir / "model.safetensors").exists(), "LoRA should save the adapter only"

    import torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    from training.data import encode_example, load_examples
    from training.experiment.models import load_tokenizer

    reloaded = AutoPeftModelForCausalLM.from_pretrained(model_dir)
    assert isinstance(reloaded, PeftModel)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tokenizer = load_tokenizer(str(model_dir))
    rows = load_examples(REPO / "examples" / "data" / "eval.jsonl")[:8]
    batch = [encode_example(r, tokenizer, 256) for r in rows]

    def mean_loss(model):
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for ex in batch:
                ids, labels = torch.tensor([ex["input_ids"]]), torch.tensor([ex["labels"]])
                n = int((labels[:, 1:] != -100).sum())
                total += model(input_ids=ids, labels=labels).loss.item() * n
                count += n
        return total / count

    # The adapter changed the model, and the reloaded adapter is the one that was trained.
    assert mean_loss(reloaded) < mean_loss(base) - 0.1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 12


@slow
def test_early_stopping_fires(tiny_model_path, tmp_path):
    # min_delta larger than any possible improvement: every evaluation after the first is "no
    # better", so with patience 1 training stops at the second evaluation.
    cfg = write_experiment(tmp_path, max_steps=60, eval_every=5, save_every=5,
                           early_stopping={"patience": 1, "min_delta": 100.0})
    out = tmp_path / "arm"
    run_recipe(cfg, out, env={**os.environ, "PAIRED_FINETUNE_NO_MLFLOW": "1"})
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 10
    assert metrics["stopped_early"] is True


@slow
def test_torchrun_two_processes_only_rank0_writes(tiny_model_path, tmp_path, tracking_env):
    cfg = write_experiment(tmp_path, max_steps=8, eval_every=4, save_every=4, batch_size=4)
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2",
           *recipe_cmd(cfg, out, "experiment")[1:]]
    env = {**tracking_env, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "[rank 1]" not in "".join(line for line in proc.stderr.splitlines() if "step " in line)
    events = [e for e in map(parse_event, proc.stdout.splitlines()) if e is not None]
    assert sum(e["event"] == "done" for e in events) == 1  # rank 1 emits nothing
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 8

    import mlflow

    client = mlflow.MlflowClient(tracking_env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("test-pair").experiment_id])
    assert len(runs) == 1
    assert runs[0].data.params["world_size"] == "2"
    assert runs[0].data.tags["arm"] == "experiment"


@slow
def test_bad_data_exits_2_and_trains_nothing(tiny_model_path, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    cfg = write_experiment(tmp_path, control=bad)
    out = tmp_path / "arm"
    proc = run_recipe(cfg, out, check=False)
    assert proc.returncode == 2
    assert f"{bad}:2:" in proc.stderr
    assert not (out / "checkpoints").exists()


@slow
def test_a_diverged_arm_fails_saves_nothing_and_its_run_is_failed(tiny_model_path, tmp_path,
                                                                  tracking_env):
    from mlflow import MlflowClient

    cfg = write_experiment(tmp_path, max_steps=8, eval_every=4, save_every=4, learning_rate=1e6)
    out = tmp_path / "arm"
    proc = run_recipe(cfg, out, env=tracking_env, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error: the control arm diverged (" in proc.stderr and "nan" in proc.stderr.lower()
    assert not (out / "metrics.json").exists() and not (out / "model").exists()
    saved = list((out / "checkpoints").glob("checkpoint-*")) if (out / "checkpoints").exists() \
        else []
    assert saved == [], saved  # the broken weights are never checkpointed
    (run,) = MlflowClient(tracking_env["MLFLOW_TRACKING_URI"]).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_env["MLFLOW_TRACKING_URI"])
         .search_experiments()])
    assert run.info.status == "FAILED"


@slow
def test_early_stopping_patience_survives_an_interruption(tiny_model_path, tmp_path):
    # no evaluation improves by 100: the first (step 5) sets the best, 10 and 15 exhaust a
    # patience of 2, so an uninterrupted arm stops at 15. Stopped at 11-14 and resumed, it must
    # still stop at 15, not start counting again (which would stop it at 20).
    cfg = write_experiment(tmp_path, max_steps=60, eval_every=5, save_every=5,
                           early_stopping={"patience": 2, "min_delta": 100.0})
    out, cache = tmp_path / "arm", tmp_path / "cache"
    env = {**os.environ, "PAIRED_FINETUNE_NO_MLFLOW": "1", "PAIRED_FINETUNE_DATA_CACHE": str(cache)}
    events = sigterm_at(cfg, out, 11, env)
    assert 11 <= events[-1]["step"] < 15, events[-1]
    assert list(cache.rglob("*.arrow")) == []  # the encoded data goes with the process
    run_recipe(cfg, out, env=env)
    assert cache.is_dir() and list(cache.rglob("*")) == [next(cache.iterdir())]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["global_step"], metrics["stopped_early"]) == (15, True)
