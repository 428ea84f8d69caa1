# ruff: noqa: E501 (the HLO module text below keeps XLA's long lines)
"""benchmarks/compile_census.py: launches and bytes read off compiled modules with known answers.

CI compiles for its CPU (the CUDA target needs jax's CUDA plugin): the module text has the
same structure (fusions, while loops with trip counts, stack frames) the census walks.
"""

import pathlib
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import compile_census  # noqa: E402


def _scan_module(length: int, size: int) -> str:
    def f(x):
        def body(carry, _):
            return jnp.sin(carry) * 2.0 + 1.0, None

        return jax.lax.scan(body, x, None, length=length)[0]

    return jax.jit(f).lower(jnp.ones((size,), jnp.float32)).compile().as_text()


def test_loop_bodies_count_once_per_trip():
    for length in (7, 3):
        found = compile_census.kernels(_scan_module(length, 1000))
        # sin * 2 + 1 on the carry: one fusion per trip; the loop test runs once more.
        fused = [k for k in found if k["op"] == "fusion" and k["bytes_written"] == 4000]
        assert [(k["launches"], k["bytes_read"]) for k in fused] == [(length, 4000)]
        tests = [k for k in found if k["bytes_written"] == 1]  # the pred[] of the condition
        assert [k["launches"] for k in tests] == [length + 1]


def test_census_sums_the_model_over_kernels():
    text = _scan_module(7, 1000)
    result = compile_census.census(text)
    found = compile_census.kernels(text)
    assert result["launches"] == sum(k["launches"] for k in found)
    want_us = sum(
        k["launches"]
        * (compile_census.OVERHEAD_US + (k["bytes_read"] + k["bytes_written"]) / 2.6e6)
        for k in found
    )
    assert result["estimated_ms"] == pytest.approx(want_us / 1e3)
    assert sum(result["per_part_ms"].values()) == pytest.approx(result["estimated_ms"])


# A scan's residual stacking: an in-place dynamic-update-slice of one [1, 4, 8] f32 row into a
# [12, 4, 8] buffer, and a dynamic-slice read of one row.
_UPDATE = """
%fused_update (param_0: f32[12,4,8], param_1: f32[1,4,8], param_2: s32[]) -> f32[12,4,8] {
  %param_0 = f32[12,4,8]{2,1,0} parameter(0)
  %param_1 = f32[1,4,8]{2,1,0} parameter(1)
  %param_2 = s32[] parameter(2)
  %constant_0 = s32[] constant(0)
  ROOT %dynamic-update-slice.1 = f32[12,4,8]{2,1,0} dynamic-update-slice(%param_0, %param_1, %param_2, %constant_0, %constant_0)
}

%fused_read (param_0.1: f32[12,4,8], param_1.1: s32[]) -> f32[1,4,8] {
  %param_0.1 = f32[12,4,8]{2,1,0} parameter(0)
  %param_1.1 = s32[] parameter(1)
  %constant_1 = s32[] constant(0)
  ROOT %dynamic-slice.1 = f32[1,4,8]{2,1,0} dynamic-slice(%param_0.1, %param_1.1, %constant_1, %constant_1), dynamic_slice_sizes={1,4,8}
}

ENTRY %main (p0: f32[12,4,8], p1: f32[1,4,8], p2: s32[]) -> (f32[12,4,8], f32[1,4,8]) {
  %p0 = f32[12,4,8]{2,1,0} parameter(0)
  %p1 = f32[1,4,8]{2,1,0} parameter(1)
  %p2 = s32[] parameter(2)
  %update = f32[12,4,8]{2,1,0} fusion(%p0, %p1, %p2), kind=kLoop, calls=%fused_update
  %read = f32[1,4,8]{2,1,0} fusion(%update, %p2), kind=kLoop, calls=%fused_read
  ROOT %tuple = (f32[12,4,8]{2,1,0}, f32[1,4,8]{2,1,0}) tuple(%update, %read)
}
"""


def test_in_place_updates_and_slices_count_only_the_rows_they_touch():
    found = {k["name"]: k for k in compile_census.kernels(_UPDATE)}
    row = 4 * 8 * 4
    assert found["update"]["bytes_written"] == row  # in place: not the whole [12, 4, 8]
    assert found["update"]["bytes_read"] == row + 4  # the update and the index
    assert found["read"]["bytes_read"] == row + 4
    assert found["read"]["bytes_written"] == row
    assert set(found) == {"update", "read"}


def test_shape_bytes_of_tuples_and_scalars():
    assert compile_census.shape_bytes("(f32[2,3]{1,0}, bf16[4]{0}, s32[])") == 24 + 8 + 4


# A cuBLAS-lt matrix product as a CUDA module lists it: its output tuple ends in the library's
# 4 MB scratch buffer.
_GEMM = """
ENTRY %main (a: bf16[128,64], b: bf16[64,32]) -> bf16[128,32] {
  %a = bf16[128,64]{1,0} parameter(0)
  %b = bf16[64,32]{1,0} parameter(1)
  %gemm = (bf16[128,32]{1,0}, s8[4194304]{0}) custom-call(%a, %b), custom_call_target="__cublas$lt$matmul"
  ROOT %out = bf16[128,32]{1,0} get-tuple-element(%gemm), index=0
}
"""


def test_library_scratch_buffers_are_not_bytes_written():
    (gemm,) = compile_census.kernels(_GEMM)
    assert gemm["bytes_read"] == (128 * 64 + 64 * 32) * 2
    assert gemm["bytes_written"] == 128 * 32 * 2


def test_calibrate_reads_the_same_kernels_profile_step_measured(tmp_path):
    """On the CPU the fit itself means nothing; what is checked is that `calibrate` reads a
    `profile_step` output directory (module text + trace) and finds the measured kernels."""
    import functools

    from benchmarks import profile_step

    @jax.jit
    def f(x):
        for _ in range(4):
            x = jnp.tanh(x) * 1.5 + jnp.sin(x).sum(0, keepdims=True)
        return x

    x = jnp.ones((256, 1024))
    f(x).block_until_ready()
    text = f.lower(x).compile().as_text()
    summary = profile_step.profile_calls(functools.partial(f, x), text, 3, tmp_path, "f", 10)
    fit = compile_census.calibrate(tmp_path, steps=3)
    assert fit["measured_launches"] == pytest.approx(summary["launches_per_step"])
    assert fit["measured_kernel_ms"] == pytest.approx(summary["op_time_us_per_step"] / 1e3)
    assert 1 <= fit["kernels_fitted"] <= fit["measured_launches"]
