#!/usr/bin/env bash
# Fetches, here (where pip reaches the package registry), the wheels that run_gpu.sh needs on
# the GPU machines' image, which has jax, flax, optax, orbax, scikit-image and pillow but not
# ml_collections, grain or tensorflow-datasets (/work/.library/device/KINDS.md, 2026-11-17),
# into .whl/ for Python 3.12 (keep .whl/ out of git: `echo /.whl/ >> .git/info/exclude`).
# On the GPU machine, before run_gpu.sh:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site
# Only data_pipeline.py needs grain / tensorflow-datasets; the other benchmarks need
# ml_collections alone (tests/scripts_test.py checks that they start without the rest).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 tensorflow-datasets==4.9.10 \
  portpicker dm-tree immutabledict simple_parsing docstring_parser tensorflow-metadata \
  googleapis-common-protos termcolor toml
# promise (imported by tfds' download manager) is published as source only: build its wheel.
python3 -m pip wheel -q --no-deps -w .whl promise==2.3
ls .whl
