#!/usr/bin/env bash
# Every benchmark on one GPU machine, most important first, in about five minutes (on an H200,
# 2026-11-28 morning, the step 106 s, the search 75, pooling 13, jitter 7, the pipeline 66 with
# 20 batches; train_step.py runs take 40-60 s; extras run while RUN_GPU_BUDGET_S lasts).
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

# Most promising first (chosen without a GPU from the H200 programs compiled here and their
# bytes and kernel counts, see RESULTS.md): the step with cuDNN attention and the ViT blocks
# rematerialised (14.8 ms estimated on 2026-12-06; with the fused block kernels too, 16.0),
# the search with cuDNN attention and the fused block kernels (8.7 ms estimated).
step train_step_bf16_fast python3 benchmarks/train_step.py --dtypes bfloat16 --attention cudnn \
  --remat-layers true --repeats 5 --out "$results/train_step_bf16_fast.json"
step eval_search_bf16_fast python3 benchmarks/eval_search.py --dtypes bfloat16 \
  --methods grid_chunk5,grid --attention cudnn --block-kernels pallas \
  --out "$results/eval_search_bf16_fast.json"
# The fused block kernels alone against XLA's, several work divisions, at the step's and the
# search's token counts.
step vit_kernels python3 benchmarks/vit_kernels.py --repeats 5 --out "$results/vit_kernels.json"
# The defaults (XLA attention, no remat, XLA's MLP), for the side-by-side ratio.
step train_step_bf16 python3 benchmarks/train_step.py --dtypes bfloat16 --repeats 5 \
  --out "$results/train_step_bf16.json"
step eval_search_bf16 python3 benchmarks/eval_search.py --dtypes bfloat16 \
  --methods grid_chunk5 --out "$results/eval_search_bf16.json"
step pooling python3 benchmarks/pooling.py --out "$results/pooling.json"
# Colour jitter + normalisation alone, as the train step runs them on the GPU.
step color_jitter python3 benchmarks/color_jitter.py --out "$results/color_jitter.json"
# The input pipeline on this host's cores (the per-host target: more images/s than the step).
# 100 batches: 20 were shorter than grain's start-up and read-ahead with 8-16 workers.
step data_pipeline python3 benchmarks/data_pipeline.py --sizes 224 --worker-counts 0,16 \
  --slic-images 10 --batches 100 --out "$results/data_pipeline.json"
# Extras, while the budget lasts: the fast step with the fused block kernels too, and with
# the pooling kernels by runs; the fast step's and search's kernels attributed to model parts
# (no CUDA graphs); the default step profiled; each change alone; XLA's grouped convolution
# for the depthwise layers, float32, the ViT unrolled, and the depthwise layers one by one.
optional train_step_bf16_fast_block_kernels python3 benchmarks/train_step.py \
  --dtypes bfloat16 --attention cudnn --remat-layers true --block-kernels pallas --repeats 5 \
  --out "$results/train_step_bf16_fast_block_kernels.json"
# The fast step with region pooling by runs (`pool_method="pallas_runs"`) instead of segment_sum.
optional train_step_bf16_fast_runs_pool python3 benchmarks/train_step.py --dtypes bfloat16 \
  --attention cudnn --remat-layers true --pool-method pallas_runs \
  --repeats 5 --out "$results/train_step_bf16_fast_runs_pool.json"
optional eval_search_bf16_cudnn python3 benchmarks/eval_search.py --dtypes bfloat16 \
  --methods grid_chunk5 --attention cudnn --out "$results/eval_search_bf16_cudnn.json"
optional profile_attributed python3 benchmarks/profile_step.py --dtype bfloat16 \
  --attention cudnn --remat-layers true --no-command-buffers --out "$results/profile_attributed"
optional eval_search_bf16_fast_profiled python3 benchmarks/eval_search.py --dtypes bfloat16 \
  --methods grid_chunk5 --attention cudnn --block-kernels pallas --no-command-buffers \
  --profile-dir "$results/profile_eval" --out "$results/eval_search_bf16_fast_profiled.json"
optional profile_default python3 benchmarks/profile_step.py --dtype bfloat16 \
  --out "$results/profile"
optional train_step_bf16_cudnn python3 benchmarks/train_step.py --dtypes bfloat16 \
  --attention cudnn --repeats 5 --out "$results/train_step_bf16_cudnn.json"
optional train_step_bf16_remat python3 benchmarks/train_step.py --dtypes bfloat16 \
  --remat-layers true --repeats 5 --out "$results/train_step_bf16_remat.json"
optional train_step_bf16_block_kernels python3 benchmarks/train_step.py --dtypes bfloat16 \
  --block-kernels pallas --repeats 5 --out "$results/train_step_bf16_block_kernels.json"
optional train_step_bf16_conv python3 benchmarks/train_step.py --dtypes bfloat16 \
  --depthwise-method conv --repeats 5 --out "$results/train_step_bf16_conv.json"
optional train_step_f32 python3 benchmarks/train_step.py --dtypes float32 --repeats 5 \
  --out "$results/train_step_f32.json"
optional train_step_bf16_unrolled python3 benchmarks/train_step.py --scan-layers false \
  --dtypes bfloat16 --repeats 5 --out "$results/train_step_bf16_unrolled.json"
optional depthwise python3 benchmarks/depthwise.py --batch 64 --out "$results/depthwise.json"
echo "== summary"
python3 benchmarks/summarize.py "$results" | tee "$results/summary.txt"
cat "$results/timings.txt"
pack
exit $status
