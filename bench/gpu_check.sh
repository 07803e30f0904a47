#!/usr/bin/env bash
# The GPU rows of bench/README.md in one go, on a machine with one CUDA GPU:
#
#     bash bench/gpu_check.sh OUTDIR
#
# 1. bench/throughput.py --device cuda: (a) the guide's recipe against (b) this project's, Llama-3-8B
#    shape, random weights, LoRA, bf16, seq 2048, packing, the largest per-device batch that fits;
# 2. (b) again with gradient checkpointing and 16 examples per micro-batch (one micro-step per update);
# 3. (b) again with Liger kernels (RMSNorm, SwiGLU, RoPE), when liger-kernel is importable.
# Each step's output goes to OUTDIR/<step>.txt; a failed step does not stop the next.
# BENCH_ARGS replaces the device arguments, e.g. for a dry run of the script on a CPU:
#     BENCH_ARGS="--device cpu --model mini --updates 1 --max-seq-length 256" bash bench/gpu_check.sh /tmp/o
set -u
out=${1:?usage: bash bench/gpu_check.sh OUTDIR}
mkdir -p "$out"
python=${PYTHON:-python3}
args=${BENCH_ARGS:---device cuda}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
cd "$(dirname "$0")/.."

{ date -u; nvidia-smi 2>&1 | head -15
  "$python" -c "import sys, torch, transformers, peft; print(sys.version.split()[0], 'torch', \
torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
} 2>&1 | tee "$out/env.txt"

# shellcheck disable=SC2086  # $args is a list of arguments
timeout 330 "$python" bench/throughput.py $args --repeats 1 2>&1 | tee "$out/main.txt"
micro=$(grep -oP '# \(b\): per-device batch \K[0-9]+' "$out/main.txt" || echo 4)

# shellcheck disable=SC2086
timeout 150 "$python" bench/throughput.py $args --repeats 1 --arms b --no-find-batch \
  --gradient-checkpointing --micro-batch 16 2>&1 | tee "$out/checkpointing.txt"

if "$python" -c "import liger_kernel" 2>/dev/null; then
  # shellcheck disable=SC2086
  timeout 150 "$python" bench/throughput.py $args --repeats 1 --arms b --no-find-batch \
    --liger --micro-batch "$micro" 2>&1 | tee "$out/liger.txt"
else
  echo "liger-kernel is not installed: step 3 skipped" | tee "$out/liger.txt"
fi
