#!/usr/bin/env bash
# Every benchmark on one GPU machine, most important first, in about five minutes.
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

# The train step in bfloat16 (the 4x target), timed and profiled per model part, with each
# depthwise-convolution method: XLA's grouped convolution (cuDNN) and the shifted sum.
for method in conv shifted_sum; do
  step "train_step_bf16_$method" python3 benchmarks/profile_step.py --dtype bfloat16 \
    --depthwise-method "$method" --out "$results/profile_$method"
done
step eval_search_bf16 python3 benchmarks/eval_search.py --dtypes bfloat16 \
  --out "$results/eval_search_bf16.json"
step pooling python3 benchmarks/pooling.py --out "$results/pooling.json"
# Colour jitter + normalisation alone, as the train step runs them on the GPU.
step color_jitter python3 benchmarks/color_jitter.py --out "$results/color_jitter.json"
# The input pipeline on this host's cores (the per-host target: more images/s than the step).
step data_pipeline python3 benchmarks/data_pipeline.py --sizes 224 --worker-counts 0,8,16 \
  --slic-images 10 --batches 20 --out "$results/data_pipeline.json"

# Extras, while the budget lasts: float32 for comparison, the ViT unrolled instead of
# scanned, and the depthwise layers one by one.
optional train_step_f32 python3 benchmarks/train_step.py --dtypes float32 --repeats 5 \
  --out "$results/train_step_f32.json"
optional eval_search_f32 python3 benchmarks/eval_search.py --dtypes float32 --repeats 5 \
  --out "$results/eval_search_f32.json"
optional train_step_bf16_unrolled python3 benchmarks/train_step.py --scan-layers false \
  --dtypes bfloat16 --repeats 5 --out "$results/train_step_bf16_unrolled.json"
optional depthwise python3 benchmarks/depthwise.py --batch 64 --out "$results/depthwise.json"

echo "== summary"
grep -h "images/s\|ms / step" "$results"/*.log | tail -n 20
cat "$results/timings.txt"
exit $status
