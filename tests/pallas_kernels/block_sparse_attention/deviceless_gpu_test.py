"""The Pallas Triton kernels compiled for an H100 on a machine without one.

XLA:GPU runs down to Triton, PTX and ptxas (`pallas_kernels.compile_only`), so these catch
what interpret mode and lowering cannot: shared-memory limits, Triton compile errors and
register spills. Numbers and speed still need the device.

Compile cost (1 to 4 s per program) is kept down by small lengths (registers and spills do
not depend on L) and by putting several shapes in one program where only lowering is checked.
The spill check covers the bidirectional op at every float32 precision and the causal op at
the default precisions in the fast tier (32 programs, about a minute and a half on one
core); the causal op at the other float32 precisions and the grouped-query kernels (2 and 4
query heads per kv head) are in the slow tier (40 programs).
"""
# pylint: disable=invalid-name

import dataclasses
import functools

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import SingleDeviceSharding

import mra_jax
from benchmarks import compile_report_gpu
from pallas_kernels import compile_only
from pallas_kernels.block_sparse_attention import pallas_triton

pytestmark = pytest.mark.usefixtures("cuda_compile")

_TRITON = "__gpu$xla.gpu.triton"
_SHAPES_BxH = ((1, 8), (8, 12))
_L, _D = 512, 64
_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
_SHORT = {"bfloat16": "bf16", "float32": "f32"}


def _on_h100(*shapes_and_dtypes):
  device = compile_only.h100_devices()[0]
  return [
    jax.ShapeDtypeStruct(shape, dtype, sharding=SingleDeviceSharding(device))
    for shape, dtype in shapes_and_dtypes
  ]


@pytest.mark.parametrize("dtype_name", _DTYPES)
def test_op_forward_and_vjp_compile(dtype_name):
  # One program: for each (B, H), the forward alone and the VJP (forward, dQ, dK/dV).
  config = compile_report_gpu.Config(dtype_name, block_size=32, head_dim=_D, length=_L)
  device = compile_only.h100_devices()[0]
  shapes = [
    compile_report_gpu.op_shapes(dataclasses.replace(config, batch=B, heads=H), device)
    for B, H in _SHAPES_BxH
  ]
  forward = compile_report_gpu.op_forward(block_size=32, precision=None)
  vjp = compile_report_gpu.op_vjp(block_size=32, precision=None)

  def programs(*per_shape):
    return [(forward(*args), vjp(*args)) for args in per_shape]

  compiled = compile_only.compile(jax.jit(programs).trace(*shapes).lower())
  calls = compile_only.custom_calls(compiled, _TRITON)
  # Per shape: forward, dQ, dK/dV (XLA merges the forward with the VJP's identical one).
  assert len(calls) == 3 * len(_SHAPES_BxH)
  short = _SHORT[dtype_name]
  q_shapes = {call.operands[2] for call in calls}  # q (forward, dQ) or k (dK/dV): (G, L, D)
  assert {f"{short}[{B * H},{_L},{_D}]" for B, H in _SHAPES_BxH} <= q_shapes


@pytest.mark.parametrize(
  "dtype_name, is_causal",
  [
    # The fast tier: float32 causal and bfloat16 bidirectional; the crossed pair in the slow.
    pytest.param("float32", True, id="float32-causal"),
    pytest.param("bfloat16", False, id="bfloat16-bidirectional"),
    pytest.param("bfloat16", True, id="bfloat16-causal", marks=pytest.mark.slow),
    pytest.param("float32", False, id="float32-bidirectional", marks=pytest.mark.slow),
  ],
)
def test_mra_attention_forward_and_grad_compile(dtype_name, is_causal):
  # As a user calls it: the kernels' interpret=None is decided by the platform the program
  # is lowered for (an H100 here), not by jax's default backend (this CPU).
  dtype = _DTYPES[dtype_name]
  attend = functools.partial(
    mra_jax.mra_attention, block_size=32, impl="pallas_triton", is_causal=is_causal
  )
  loss = lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32))

  def programs(*qkvs):
    return [(attend(*qkv), jax.grad(loss, argnums=(0, 1, 2))(*qkv)) for qkv in qkvs]

  qkvs = [_on_h100(*[((B, _L, H, _D), dtype)] * 3) for B, H in _SHAPES_BxH]
  compiled = compile_only.compile(jax.jit(programs).trace(*qkvs).lower())
  calls = compile_only.custom_calls(compiled, _TRITON)
  # Per shape: forward, dQ, dK/dV, the forward shared by the output and the gradient.
  assert len(calls) == 3 * len(_SHAPES_BxH)
  short = _SHORT[dtype_name]
  q_shapes = {call.operands[2] for call in calls}
  assert {f"{short}[{B * H},{_L},{_D}]" for B, H in _SHAPES_BxH} <= q_shapes
  # Each forward writes its output over acc0 (operand 8); the backward kernels do not alias.
  assert [call.aliases for call in calls].count(((0, 8),)) == len(_SHAPES_BxH)


# (dtype, float32 precision): each dtype at its default, and float32 at every other choice
# (half-precision inputs ignore the precision).
_DEFAULTS = [(name, None) for name in _DTYPES]
_OTHER_PRECISIONS = [
  ("float32", precision)
  for precision in pallas_triton.F32_PRECISIONS
  if precision != pallas_triton.DEFAULT_F32_PRECISION
]
# (dtype, precision, causal, query heads per kv head, block, head dim): the fast tier checks
# each dtype's default precision, bidirectional and causal, at the smallest and the most
# register-hungry shapes; the slow tier every precision, shape and group.
_SHAPES = [(32, 64), (32, 128), (64, 64), (64, 128)]
_FAST_SHAPES = {(32, 64), (64, 128)}
_SPILL_CHECKS = [
  pytest.param(*p, causal, group, *shape, marks=() if fast else pytest.mark.slow)
  for p, causal, group, fast_kind in (
    *[(p, causal, 1, True) for p in _DEFAULTS for causal in (False, True)],
    *[(p, causal, 1, False) for p in _OTHER_PRECISIONS for causal in (False, True)],
    *[
      (p, causal, group, False)
      for p in _DEFAULTS
      for causal, group in ((True, 2), (False, 4), (True, 4))
    ],
  )
  for shape in _SHAPES
  for fast in [fast_kind and shape in _FAST_SHAPES]
]


@pytest.mark.parametrize(
  "dtype_name, precision, causal, group, block_size, head_dim", _SPILL_CHECKS
)
def test_kernels_do_not_spill(dtype_name, precision, causal, group, block_size, head_dim):
  config = compile_report_gpu.Config(
    dtype_name, block_size, head_dim, precision, causal=bool(causal), group=group
  )
  kernels, _ = compile_report_gpu.kernel_report(config)
  names = sorted(kernel.name.removeprefix(compile_report_gpu.KERNEL_PREFIX) for kernel in kernels)
  assert names == ["dkv", "dq", "fwd"]
  spills = {k.name: (k.spill_store_bytes, k.spill_load_bytes) for k in kernels}
  assert all(spill == (0, 0) for spill in spills.values()), spills
  # Tensor cores for every dtype and float32 precision but IEEE "float32" (scalar FMA).
  expected = ("none",) if precision == "float32" else ("mma.sync", "wgmma")
  assert all(kernel.mma in expected for kernel in kernels), [k.mma for k in kernels]


def test_grouped_programs_share_each_key_tile():
  # bfloat16, block 32, 4 query heads per kv head: one forward and one dQ program per kv
  # head and query block holds all four heads' rows (128), so each K/V tile is loaded once
  # for the group; dK/dV keeps one program per key block.
  config = compile_report_gpu.Config("bfloat16", 32, 64, None, group=4)
  kernels, _ = compile_report_gpu.kernel_report(config)
  grids = {k.name.removeprefix(compile_report_gpu.KERNEL_PREFIX): k.grid for k in kernels}
  blocks = config.length // config.block_size
  assert grids == {k: (config.heads, blocks, 1) for k in ("fwd", "dq", "dkv")}, grids
