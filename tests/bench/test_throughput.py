"""bench/throughput.py: its data generator, arguments and arithmetic (the benchmark itself is not
run in the test suite: it takes minutes)."""

import importlib
import importlib.util
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from training.data import CHAT, detect_format

PATH = Path(__file__).resolve().parents[2] / "bench" / "throughput.py"
spec = importlib.util.spec_from_file_location("bench_throughput", PATH)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up there
spec.loader.exec_module(bench)  # from outside bench/: it must find its own modules itself
setup = importlib.import_module("throughput_setup")  # the data, arms, shapes and MFU
runs = importlib.import_module("throughput_runs")  # the measured runs


def test_synthetic_rows_are_deterministic_chat_rows_with_skewed_lengths():
    rows = setup.synthetic_rows(400, seed=7, median_lines=2, sigma=1.3)
    assert rows == setup.synthetic_rows(400, seed=7, median_lines=2, sigma=1.3)
    assert rows != setup.synthetic_rows(400, seed=8, median_lines=2, sigma=1.3)
    assert all(detect_format(r) == CHAT for r in rows)
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]
    sizes = sorted(len(r["messages"][0]["content"]) for r in rows)
    median = sizes[len(sizes) // 2]
    assert statistics.fmean(sizes) > median  # a long tail to the right
    assert sizes[-1] > 6 * median  # a few examples run long


def test_synthetic_rows_reject_bad_parameters():
    with pytest.raises(ValueError):
        setup.synthetic_rows(0, seed=1, median_lines=2)
    with pytest.raises(ValueError):
        setup.synthetic_rows(10, seed=1, median_lines=0)


def test_both_arms_take_the_same_examples_per_update():
    specs = setup.arm_specs()
    a, b = specs["a"], specs["b"]
    assert (a.per_device_batch_size, a.gradient_accumulation_steps, a.packing) == (2, 8, False)
    assert a.loss_on_every_token and not b.loss_on_every_token and b.packing
    assert (b.per_device_batch_size, b.gradient_accumulation_steps) == (4, 4)
    for micro in (1, 2, 4, 8, 16):
        s = setup.arm_specs(micro)["b"]
        assert s.per_device_batch_size * s.gradient_accumulation_steps == 16
    with pytest.raises(ValueError, match="divide 16"):
        setup.arm_specs(5)


def test_defaults_per_device():
    from training.local.backend import threads_per_arm

    cpu = bench.parse_args([])
    assert (cpu.device, cpu.model, cpu.method, cpu.max_seq_length, cpu.find_batch) == (
        "cpu", "tiny-llama", "full", 512, False)
    assert cpu.threads == threads_per_arm() and cpu.micro_batch is None  # the recipe's 4 later
    gpu = bench.parse_args(["--device", "cuda"])
    assert (gpu.model, gpu.method, gpu.max_seq_length, gpu.find_batch, gpu.threads) == (
        "llama3-8b", "lora", 2048, True, 0)
    assert gpu.learning_rate == 2e-4 and cpu.learning_rate == 2e-3


@pytest.mark.parametrize("argv", [["--micro-batch", "3"], ["--find-batch"], ["--updates", "0"],
                                  ["--device", "tpu"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_llama3_8b_shape_and_mfu_arithmetic():
    cfg = setup.shape_config("llama3-8b")
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"],
            cfg["num_key_value_heads"]) == (4096, 32, 128256, 8)
    assert setup.shape_config("llama3-8b", layers=2)["num_hidden_layers"] == 2
    spec = setup.arm_specs()["b"]
    r = runs.Result(spec, loop_s=2.0, wall_s=2.5, cpu_s=2.0, real_tokens=2000,
                    computed_tokens=2000, labelled_tokens=500, peak_bytes=0, eval_loss=1.0,
                    train_loss=1.0, examples=[], n_params=8_000_000_000, n_trainable=40_000_000)
    ours, strict = setup.mfu(r, "lora", False, peak_tflops=1000.0)
    assert ours == pytest.approx(4 * 8e9 * 1000 / 1e15)  # train estimate's 4·N per token
    assert strict == pytest.approx((6 * 4e7 + 4 * (8e9 - 4e7)) * 1000 / 1e15)
    assert r.padding_share == 0 and r.tokens_per_second == 1000
    assert setup.gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert setup.gpu_peak_tflops("Tesla T4") is None


def test_runs_as_a_script_from_another_directory(tmp_path):
    """`python bench/throughput.py` finds its modules beside it (throughput_setup.py,
    throughput_runs.py) wherever it is started from."""
    run = subprocess.run([sys.executable, str(PATH), "--help"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: throughput.py") and "--micro-batch" in run.stdout
