#!/usr/bin/env bash
# Every benchmark on one GPU machine, most important first, in about five minutes (on an H200,
# 2026-11-28, the five main steps took 106 + 75 + 13 + 7 + 66 s, the pipeline then with 20
# batches and three worker counts; the extras run while RUN_GPU_BUDGET_S lasts).
#   bash benchmarks/run_gpu.sh            # results in benchmarks/out/gpu/ (JSON + logs)
#   RUN_GPU_BUDGET_S=600 bash benchmarks/run_gpu.sh   # let the optional extras run too
# With $OUT set (the device tool), everything is also packed into $OUT/gpu_results.tgz after
# each step, so a run stopped at its time limit still returns what it finished.
# The GPU image lacks ml_collections, grain and tensorflow-datasets: fetch their wheels into
# .whl/ here first with benchmarks/gpu_wheels.sh; this script installs them there.
set -uo pipefail
cd "$(dirname "$0")/.."
results=benchmarks/out/gpu
mkdir -p "$results"
budget="${RUN_GPU_BUDGET_S:-270}"  # optional steps start only before this many seconds
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
if ! python3 -c "import ml_collections, grain, tensorflow_datasets" 2>/dev/null && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" \
  | tee "$results/versions.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee -a "$results/versions.txt"
status=0

pack() {
  if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu_results.tgz" -C "$results" .; fi
}

# step NAME COMMAND...: runs it, logs to NAME.log, prints its time and last lines, packs.
step() {
  local name=$1 start=$SECONDS
  shift
  echo "== $name"
  "$@" > "$results/$name.log" 2>&1 || { status=1; echo "FAILED: $name"; }
  echo "$name: $((SECONDS - start)) s (total $SECONDS s)" | tee -a "$results/timings.txt"
  tail -n 4 "$results/$name.log"
  pack
}

# optional NAME COMMAND...: a step that runs only while the time budget lasts.
optional() {
  if ((SECONDS > budget)); then
    echo "skipped $1: past the ${budget} s budget" | tee -a "$results/timings.txt"
    return
  fi
  step "$@"
}

# The train step in bfloat16 (the 4x target), timed, then profiled per kernel (CUDA graphs on,
# as in training: the profile's kernels stay unattributed; see the extras).
step train_step_bf16 python3 benchmarks/profile_step.py --dtype bfloat16 --out "$results/profile"
step eval_search_bf16 python3 benchmarks/eval_search.py --dtypes bfloat16 \
  --out "$results/eval_search_bf16.json"
step pooling python3 benchmarks/pooling.py --out "$results/pooling.json"
# Colour jitter + normalisation alone, as the train step runs them on the GPU.
step color_jitter python3 benchmarks/color_jitter.py --out "$results/color_jitter.json"
# The input pipeline on this host's cores (the per-host target: more images/s than the step).
# 100 batches: 20 were shorter than grain's start-up and read-ahead with 8-16 workers.
step data_pipeline python3 benchmarks/data_pipeline.py --sizes 224 --worker-counts 0,16 \
  --slic-images 10 --batches 100 --out "$results/data_pipeline.json"

# Extras, while the budget lasts: the step's kernels attributed to model parts (no CUDA
# graphs), the evaluation with cuDNN's fused attention profiled the same way, the step with
# cuDNN attention (padded to 198 tokens) and with the ViT blocks rematerialised, XLA's grouped
# convolution for the depthwise layers, float32, the ViT unrolled, and the depthwise layers
# one by one.
optional profile_attributed python3 benchmarks/profile_step.py --dtype bfloat16 \
  --no-command-buffers --out "$results/profile_attributed"
optional eval_search_bf16_cudnn_profiled python3 benchmarks/eval_search.py --dtypes bfloat16 \
  --methods grid_chunk5 --attention cudnn --no-command-buffers \
  --profile-dir "$results/profile_eval" --out "$results/eval_search_bf16_cudnn.json"
optional train_step_bf16_cudnn python3 benchmarks/train_step.py --dtypes bfloat16 \
  --attention cudnn --repeats 5 --out "$results/train_step_bf16_cudnn.json"
optional train_step_bf16_remat python3 benchmarks/train_step.py --dtypes bfloat16 \
  --remat-layers true --repeats 5 --out "$results/train_step_bf16_remat.json"
optional train_step_bf16_conv python3 benchmarks/train_step.py --dtypes bfloat16 \
  --depthwise-method conv --repeats 5 --out "$results/train_step_bf16_conv.json"
optional train_step_f32 python3 benchmarks/train_step.py --dtypes float32 --repeats 5 \
  --out "$results/train_step_f32.json"
optional train_step_bf16_unrolled python3 benchmarks/train_step.py --scan-layers false \
  --dtypes bfloat16 --repeats 5 --out "$results/train_step_bf16_unrolled.json"
optional depthwise python3 benchmarks/depthwise.py --batch 64 --out "$results/depthwise.json"

echo "== summary"
grep -h "images/s\|ms / step" "$results"/*.log | tail -n 20
cat "$results/timings.txt"
exit $status
