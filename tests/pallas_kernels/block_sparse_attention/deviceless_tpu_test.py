"""The Mosaic TPU kernels compiled by libtpu for real TPU targets, from a CPU-only host.

Each long program is a forward and gradient (three kernels: forward, dQ, dK/dV) compiled at
the default scoped-VMEM limit (16 MiB on v5e, 32 MiB on v6e), at the lengths where kernels
that keep a whole head resident overflowed it: MRA's, and the causal op's (grouped-query
too). What passes here fits the chip's memories and layouts; numbers and speed need a
device. The long programs take 12-65 s each on one core and are marked slow; the small op
compiles (bidirectional, causal, grouped-query) stay in the fast tier.
"""
# pylint: disable=invalid-name

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import SingleDeviceSharding

import mra_jax
from pallas_kernels import compile_only
from pallas_kernels.block_sparse_attention import api, base
from pallas_kernels.block_sparse_attention import pallas_mosaic_tpu as tpu_kernels
from pallas_kernels.block_sparse_attention import pallas_mosaic_tpu_vjp as tpu_kernels_vjp

pytestmark = pytest.mark.usefixtures("tpu_compile")

_TOPOLOGY = {"v5e": "v5e:2x2", "v6e": "v6e:2x2"}
_KERNELS = 3  # forward, dQ, dK/dV


def _placed(device):
  sharding = SingleDeviceSharding(device)
  return lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _compile_mra_forward_and_grad(chip, *, L, dtype, B, H, D=64, **knobs):
  """MRA-2 forward and the gradient in q, k, v, as one program compiled for `chip`."""
  sds = _placed(compile_only.tpu_devices(_TOPOLOGY[chip])[0])
  x = sds((B, L, H, D), dtype)

  def forward_and_grad(q, k, v):
    out, pullback = jax.vjp(
      lambda q, k, v: mra_jax.mra_attention(q, k, v, impl="pallas_mosaic_tpu", **knobs), q, k, v
    )
    return out, pullback(out)

  return compile_only.compile(jax.jit(forward_and_grad).trace(x, x, x).lower())


def _op_shapes(chip, *, B, H, Hk, L, D, num_tiles, dtype):
  """The op's argument shapes on one device of `chip`."""
  return base.argument_shapes(
    batch=B,
    heads=H,
    kv_heads=Hk,
    length=L,
    head_dim=D,
    num_tiles=num_tiles,
    dtype=dtype,
    sharding=SingleDeviceSharding(compile_only.tpu_devices(_TOPOLOGY[chip])[0]),
  )


def test_kernels_keep_the_default_vmem_limit():
  assert tpu_kernels.VMEM_LIMIT_BYTES is None
  assert tpu_kernels_vjp.VMEM_LIMIT_BYTES is None


# Compile times on a 2-core CPU: v5e L=65536 ~40 s, v6e L=32768 ~65 s, each program; the
# float32 B=8, H=12 program on a v5e is refused in about a second. A kernel's VMEM does not
# depend on the batch or the head count (one head is resident at a time), so the larger
# batch is compiled where it tests HBM: on the v5e's 16 GiB.
_LONG = [
  pytest.param(chip, L, dtype, B, H, id=f"{chip}-L{L}-{name}-B{B}H{H}")
  for chip, L in (("v5e", 65536), ("v6e", 32768))
  for dtype, name in ((jnp.bfloat16, "bf16"), (jnp.float32, "f32"))
  for B, H in ((1, 8), (8, 12))
  if chip == "v5e" or B == 1
]
# A v5e holds 16 GiB of HBM (15.75 GiB usable). In float32 at B=8, H=12, L=65536, D=64, a
# head-major (B*H, L, D) array takes 3 GiB (D=64 pads to 128 lanes), and while the second
# backward kernel runs, its q, k, v and output cotangent, the gradient it writes, the
# program's output and a finished gradient are live: 18 GiB or more, 31.7 GiB as compiled. No
# kernel with head-major operands fits that (docs/kernels.md, "HBM at v5e"); the bfloat16
# program needs 14.63 GiB and fits.
_EXCEEDS_HBM = (("v5e", jnp.float32, 8, 12),)


@pytest.mark.slow
@pytest.mark.parametrize("chip, L, dtype, B, H", _LONG)
def test_mra_forward_and_grad_compile_at_long_lengths(chip, L, dtype, B, H):
  if (chip, dtype, B, H) in _EXCEEDS_HBM:
    # What must hold: the refusal is HBM's, not VMEM's.
    with pytest.raises(jax.errors.JaxRuntimeError, match="Ran out of memory on HBM"):
      _compile_mra_forward_and_grad(chip, L=L, dtype=dtype, B=B, H=H)
    return
  compiled = _compile_mra_forward_and_grad(chip, L=L, dtype=dtype, B=B, H=H)
  calls = compile_only.custom_calls(compiled, "tpu_custom_call")
  assert len(calls) == _KERNELS
  # The kernels see the whole (B * H, L, D) arrays: nothing was split to fit.
  dtype_name = "bf16" if dtype == jnp.bfloat16 else "f32"
  assert all(f"{dtype_name}[{B * H},{L},64]" in call.operands for call in calls)
  # The forward kernel writes its output over acc0 (operand 8), the float32 initial state.
  assert sum(call.aliases == ((0, 8),) for call in calls) == 1


# Causal MRA-2 itself (selection, the low-resolution term of each variant, the causal
# kernels) at the same lengths, bfloat16, B=1, H=8. The variants differ only outside the
# kernels, so the second one is compiled for one chip.
_CAUSAL_MRA_LONG = [
  pytest.param(chip, L, low_res, id=f"{chip}-L{L}-{low_res}")
  for chip, L in (("v5e", 65536), ("v6e", 32768))
  for low_res in ("per_query", "per_block")
  if chip == "v5e" or low_res == "per_query"
]


@pytest.mark.slow
@pytest.mark.parametrize("chip, L, low_res", _CAUSAL_MRA_LONG)
def test_causal_mra_forward_and_grad_compile_at_long_lengths(chip, L, low_res):
  compiled = _compile_mra_forward_and_grad(
    chip, L=L, dtype=jnp.bfloat16, B=1, H=8, is_causal=True, causal_low_resolution=low_res
  )
  calls = compile_only.custom_calls(compiled, "tpu_custom_call")
  assert len(calls) == _KERNELS
  assert all(f"bf16[8,{L},64]" in call.operands for call in calls)


# The causal op at the lengths above, as MRA with causal selection calls it: 8 tiles per
# query block of a lower-triangular pattern (the kernels see only the tile count), one kv
# head per query head and 4 query heads per kv head. 12-21 s each on one core. In float32,
# which takes twice the VMEM of bfloat16 (whose kernels the causal MRA programs above compile).
_CAUSAL_LONG = [
  pytest.param(chip, L, jnp.float32, Hk, id=f"{chip}-L{L}-f32-Hk{Hk}")
  for chip, L in (("v5e", 65536), ("v6e", 32768))
  for Hk in (8, 2)
]


@pytest.mark.slow
@pytest.mark.parametrize("chip, L, dtype, Hk", _CAUSAL_LONG)
def test_causal_op_forward_and_grad_compile_at_long_lengths(chip, L, dtype, Hk):
  B, H, D, block_size = 1, 8, 64, 32
  args = _op_shapes(chip, B=B, H=H, Hk=Hk, L=L, D=D, num_tiles=(L // block_size) * 8, dtype=dtype)
  compiled = compile_only.compile(
    jax.jit(_forward_and_grad(block_size, causal=True)).trace(*args).lower()
  )
  calls = compile_only.custom_calls(compiled, "tpu_custom_call")
  assert len(calls) == _KERNELS
  # Nothing was split to fit: the query side is every head's whole length (the group stacked).
  dtype_name = "bf16" if dtype == jnp.bfloat16 else "f32"
  assert all(f"{dtype_name}[{B * Hk},{L * H // Hk},{D}]" in call.operands for call in calls)
  assert sum(call.aliases == ((0, 8),) for call in calls) == 1


def _forward_and_grad(block_size, causal=False):
  """The op's forward and gradient in q, k, v, l0 and acc0 (under the output as cotangent)."""

  def forward(*args):
    return api.block_sparse_attention(
      *args, block_size=block_size, causal=causal, implementation="pallas_mosaic_tpu"
    )

  def run(q, k, v, ids, valid, m0, l0, acc0):
    outs, pullback = jax.vjp(
      lambda q, k, v, l0, acc0: forward(q, k, v, ids, valid, m0, l0, acc0), q, k, v, l0, acc0
    )
    return outs, pullback(outs)

  return run


@pytest.mark.parametrize("chip", ["v5e", "v6e"])
@pytest.mark.parametrize(
  "dtype, block_size, D, causal, H, Hk",
  [
    (jnp.bfloat16, 32, 64, False, 2, 2),
    (jnp.float32, 64, 128, False, 2, 2),
    (jnp.bfloat16, 128, 32, False, 2, 2),
    # Causal, with 2 and 4 query heads per kv head.
    (jnp.bfloat16, 32, 64, True, 4, 2),
    (jnp.float32, 128, 64, True, 4, 1),
  ],
)
def test_op_forward_and_vjp_compile(chip, dtype, block_size, D, causal, H, Hk):
  B, L = 2, 512
  args = _op_shapes(chip, B=B, H=H, Hk=Hk, L=L, D=D, num_tiles=(L // block_size) * 3, dtype=dtype)

  def forward(*args):
    return api.block_sparse_attention(
      *args, block_size=block_size, causal=causal, implementation="pallas_mosaic_tpu"
    )

  def vjp(q, k, v, ids, valid, m0, l0, acc0):
    outs, pullback = jax.vjp(
      lambda q, k, v, l0, acc0: forward(q, k, v, ids, valid, m0, l0, acc0), q, k, v, l0, acc0
    )
    return pullback(outs)

  for fn, kernels in ((forward, 1), (vjp, _KERNELS)):
    compiled = compile_only.compile(jax.jit(fn).trace(*args).lower())
    calls = compile_only.custom_calls(compiled, "tpu_custom_call")
    assert len(calls) == kernels
    # Only the forward kernel writes in place (its output over acc0, operand 8).
    assert [call.aliases for call in calls].count(((0, 8),)) == 1
