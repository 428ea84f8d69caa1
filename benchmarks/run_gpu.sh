#!/usr/bin/env bash
# Every benchmark on one GPU machine, in a few minutes; JSON files into $OUT (or benchmarks/out).
#   bash benchmarks/run_gpu.sh
# The GPU image lacks ml_collections, grain and tensorflow-datasets: fetch their wheels here
# first with benchmarks/gpu_wheels.sh and install them there (its header says how).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/out}"
mkdir -p "$out"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$out/gpu.txt"
status=0
python3 benchmarks/pooling.py --out "$out/pooling.json" > "$out/pooling.log" 2>&1 || status=1
tail -n 3 "$out/pooling.log"
python3 benchmarks/train_step.py --out "$out/train_step.json" > "$out/train_step.log" 2>&1 || status=1
tail -n 3 "$out/train_step.log"
# The ViT's blocks unrolled instead of scanned (the CPU default since 2026-11-28): which wins here?
python3 benchmarks/train_step.py --scan-layers false --dtypes bfloat16 --repeats 5 \
  --out "$out/train_step_unrolled.json" > "$out/train_step_unrolled.log" 2>&1 || status=1
tail -n 3 "$out/train_step_unrolled.log"
python3 benchmarks/eval_search.py --out "$out/eval_search.json" > "$out/eval_search.log" 2>&1 || status=1
tail -n 3 "$out/eval_search.log"
# Is the CPU's shifted-sum depthwise conv also faster than cuDNN's at batch 64?
python3 benchmarks/depthwise.py --batch 64 --out "$out/depthwise.json" > "$out/depthwise.log" 2>&1 || status=1
grep -A5 '"totals"' "$out/depthwise.log"
# Colour jitter + normalisation alone, as the train step runs them on the GPU.
python3 benchmarks/color_jitter.py --out "$out/color_jitter.json" > "$out/color_jitter.log" 2>&1 || status=1
grep ms_per_image "$out/color_jitter.log"
# The input pipeline on this host's cores (the per-host target: more images/s than the step).
python3 benchmarks/data_pipeline.py --sizes 224 --worker-counts 0,8,16 --slic-images 10 --batches 20 \
  --out "$out/data_pipeline.json" > "$out/data_pipeline.log" 2>&1 || status=1
grep "images/s" "$out/data_pipeline.log" | tail -n 8
exit $status
