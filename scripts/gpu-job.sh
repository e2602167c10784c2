#!/usr/bin/env bash
# Figure 1 (`gpu` profile) and the U-Net benchmark on a GPU machine that has the
# CUDA 13 user-space libraries and PyTorch but no Rust toolchain. Run from the
# repository root of a checkout copied there, with a prepared folder DIR holding:
#   DIR/xtask.xz         release xtask built with `--features cuda`, xz-compressed
#   DIR/run-with-cuda.sh a launcher that finds the CUDA libraries (see the README)
#   DIR/hf-home          a Hugging Face cache with CIFAR-10 (16k train / 2k test suffice)
# usage: [E2H_PYTHON=python-with-torch] scripts/gpu-job.sh DIR OUT
# Results (at most a handful of files) are copied into OUT.
set -uo pipefail
DIR=$(cd "$1" && pwd); OUT=$2
mkdir -p "$OUT"
export HF_HOME="$DIR/hf-home"
run() { bash "$DIR/run-with-cuda.sh" "$DIR/xtask" --root . --cache "$DIR/cache" "$@"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
{ time run figure 1 --profile gpu; } > "$OUT/figure1.log" 2>&1
echo "figure 1 exit: $?" >> "$OUT/figure1.log"
run run pipelines/fig1-cifar-simplicity-bias.yaml --profile gpu --print crossings/crossings >> "$OUT/figure1.log" 2>&1
cp figures/fig1-gpu.png figures/fig1-gpu.svg "$OUT/" 2>/dev/null
# The tables behind the figure, from the cache entry of the training stage.
run run pipelines/fig1-cifar-simplicity-bias.yaml --profile gpu --print train/losses > "$OUT/losses.txt" 2>&1
{ time run bench unet --device cuda --width 128 --tf32 --steps 10; } > "$OUT/bench-unet.log" 2>&1
