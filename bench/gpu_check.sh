#!/usr/bin/env bash
# The GPU rows of bench/README.md in one go, on a machine with one CUDA GPU:
#
#     bash bench/gpu_check.sh OUTDIR
#
# 1. bench/throughput.py --device cuda: (a) the guide's recipe against (b) this project's, Llama-3-8B
#    shape, random weights, LoRA, bf16, seq 2048, packing, the largest per-device batch that fits;
# 2. (b) alone at per-device batch 4 (the recipe's default: train estimate's MFU) and 8;
# 3. (b) alone with SDPA's cuDNN backend put back (what the recipe's attention_backends saves);
# 4. (b) alone with gradient checkpointing and 16 examples per micro-batch;
# 5. (b) alone with Liger kernels (RMSNorm, SwiGLU, RoPE), when liger-kernel is importable;
# 6. (b) alone with per-example attention on packed rows (training/attention.py) instead of SDPA
#    with a block-diagonal mask, at batch 4 and 8 (compare with step 2).
# Each step's output goes to OUTDIR/<step>.txt; a failed step does not stop the next.
# BENCH_ARGS replaces the device arguments, e.g. for a dry run of the script on a CPU:
#     BENCH_ARGS="--device cpu --model mini --updates 1 --max-seq-length 256" bash bench/gpu_check.sh /tmp/o
set -u
out=${1:?usage: bash bench/gpu_check.sh OUTDIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)  # absolute: the script runs from the repository root
cd "$(dirname "$0")/.."
# the repository's .venv when there is one (make install), else python3 on PATH
if [ -x .venv/bin/python ]; then python=${PYTHON:-.venv/bin/python}; else python=${PYTHON:-python3}; fi
if ! "$python" -c "import torch, transformers, peft, training" 2>/dev/null; then
  echo "error: $python cannot import torch, transformers, peft and training: make install, or PYTHON=..." >&2
  exit 2
fi
args=${BENCH_ARGS:---device cuda}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

{ date -u; nvidia-smi 2>&1 | head -15
  "$python" -c "import sys, torch, transformers, peft; print(sys.version.split()[0], 'torch', \
torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
} 2>&1 | tee "$out/env.txt"

# shellcheck disable=SC2086  # $args is a list of arguments
timeout 330 "$python" bench/throughput.py $args --repeats 1 2>&1 | tee "$out/main.txt"
micro=$(grep -oP '# \(b\): per-device batch \K[0-9]+' "$out/main.txt" || echo 2)

b_alone() {  # (b) alone, no batch search: name, then throughput.py's extra arguments
  local name=$1; shift
  # shellcheck disable=SC2086
  timeout 150 "$python" bench/throughput.py $args --repeats 1 --arms b --no-find-batch "$@" 2>&1 \
    | tee "$out/$name.txt"
}
b_alone batch4 --micro-batch 4
b_alone batch8 --micro-batch 8
b_alone cudnn --micro-batch "$micro" --cudnn-attention
b_alone checkpointing --micro-batch 16 --gradient-checkpointing
if "$python" -c "import liger_kernel" 2>/dev/null; then
  b_alone liger --micro-batch 4 --liger
else
  echo "liger-kernel is not installed: step 5 skipped" | tee "$out/liger.txt"
fi
b_alone packed4 --micro-batch 4 --packed-attention
b_alone packed8 --micro-batch 8 --packed-attention
