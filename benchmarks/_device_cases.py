"""`benchmarks.device_check`'s correctness cases: inputs, programs, tolerances.

The inputs carry what kernels get wrong first: key padding (a partly padded block and a
fully padded one), uneven tile rows and an empty one, empty initial online-softmax states,
and (for `mra_attention`) a length that is no multiple of the block and padded queries.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import mra_jax
import pallas_kernels
from pallas_kernels.block_sparse_attention import pallas_triton

# Relative error (max |got - want| / max |want|) allowed per (dtype, f32 dot kind).
TOLERANCE = {"float32:full": 1e-4, "float32:reduced": 2e-2, "bfloat16:full": 3e-2}
# Precision choices whose float32 dots are near-float32: exact IEEE, and the three-pass splits
# (bf16x3, tf32x3: about 1e-5 relative, measured in docs/kernels.md). tf32 and bf16 round.
_FULL_F32_NAMES = ("highest", "float32", "bf16x3", "tf32x3")


@dataclasses.dataclass(frozen=True)
class CheckSizes:
  """Batch 2 always; `blocks` query/key blocks per sequence, `heads` heads of `head_dim`."""

  blocks: int
  heads: int
  head_dim: int


def f32_precisions() -> tuple[Any, ...]:
  """The float32 dot precisions the Triton implementation offers; (None,) = its default only.

  Reads `F32_PRECISIONS` from `pallas_kernels.block_sparse_attention.pallas_triton`; each
  value is passed on as `precision=` to the op and to `mra_attention`.
  """
  return tuple(getattr(pallas_triton, "F32_PRECISIONS", (None,)))


def tolerance(
  dtype: str, implementation: str, precision: Any, default_is_f32: bool
) -> tuple[float, str]:
  """The allowed relative error, and the dot kind it assumes ("full" or "reduced").

  `default_is_f32`: jax's default matmul precision keeps float32 (on CPU, or inside
  `jax.default_matmul_precision("highest")`); on GPUs the default may use TF32.
  """
  if dtype != "float32":
    return TOLERANCE[f"{dtype}:full"], "full"
  if implementation == "xla_chunked":  # plain jnp: jax's default precision
    kind = "full" if default_is_f32 else "reduced"
  elif precision is None or str(precision).lower() in _FULL_F32_NAMES:
    kind = "full"
  else:
    kind = "reduced"
  return TOLERANCE[f"float32:{kind}"], kind


def op_inputs(dtype, block_size: int, sizes: CheckSizes, seed: int = 0) -> dict[str, jax.Array]:
  """Block-sparse op inputs with key padding, uneven and empty rows, empty initial states."""
  B, H, N, D = 2, sizes.heads, sizes.blocks, sizes.head_dim
  L = N * block_size
  keys = jax.random.split(jax.random.key(seed), 9)
  q, k, v = (jax.random.normal(keys[i], (B, H, L, D)).astype(dtype) for i in range(3))
  scores = jax.random.uniform(keys[3], (B, H, N, N)).at[:, :, 1].set(-1.0)  # row 1: no tiles
  budget = (N * N) // 2  # fewer than the tiles outside row 1: row 1 stays empty
  _, ids = jax.lax.top_k(scores.reshape(B, H, N * N), budget)
  # batch 1: a partly padded block and a fully padded last block
  valid = jnp.arange(L)[None, :] < jnp.array([L, L - block_size - 7])[:, None]
  has_state = (jnp.arange(L) // block_size) % 2 == 0  # odd query blocks: empty state
  m0 = jnp.where(has_state, jax.random.normal(keys[4], (B, H, L)), -jnp.inf)
  l0 = jnp.where(has_state, jax.random.uniform(keys[5], (B, H, L), minval=0.5, maxval=2.0), 0.0)
  acc0 = l0[..., None] * jax.random.normal(keys[6], (B, H, L, D))
  d_out = jax.random.normal(keys[7], (B, H, L, D))
  # lse of an empty row is log(eps): its gradient in l0 is 1/eps, which says nothing
  d_lse = jnp.where(has_state, jax.random.normal(keys[8], (B, H, L)), 0.0)
  return dict(
    q=q,
    k=k,
    v=v,
    ids=jnp.sort(ids, axis=-1).astype(jnp.int32),
    valid=valid,
    m0=m0,
    l0=l0,
    acc0=acc0,
    d_out=d_out,
    d_lse=d_lse,
  )


def op_program(implementation: str, block_size: int, options: dict[str, Any]):
  """`(q, k, v, ...) -> (out, lse, dq, dk, dv, dl0, dacc0)` for one implementation."""

  def program(q, k, v, ids, valid, m0, l0, acc0, d_out, d_lse):
    attend = lambda q, k, v, l0, acc0: pallas_kernels.block_sparse_attention(
      q,
      k,
      v,
      ids,
      valid,
      m0,
      l0,
      acc0,
      block_size=block_size,
      implementation=implementation,
      **options,
    )
    outs, pullback = jax.vjp(attend, q, k, v, l0, acc0)
    return (*outs, *pullback((d_out, d_lse)))

  return program


OP_OUTPUTS = ("out", "lse", "dq", "dk", "dv", "dl0", "dacc0")
MRA_OUTPUTS = ("out", "dq", "dk", "dv")


def mra_inputs(dtype, block_size: int, sizes: CheckSizes, seed: int = 1) -> dict[str, jax.Array]:
  """[B, L, H, D] inputs whose length is no multiple of the block, one batch row padded."""
  B, H, D = 2, sizes.heads, sizes.head_dim
  L = (sizes.blocks - 1) * block_size + 17
  keys = jax.random.split(jax.random.key(seed), 4)
  q, k, v = (jax.random.normal(keys[i], (B, L, H, D)).astype(dtype) for i in range(3))
  mask = jnp.arange(L)[None, :] < jnp.array([L, 2 * block_size + 3])[:, None]
  d_out = jax.random.normal(keys[3], (B, L, H, D)) * mask[:, :, None, None]
  return dict(q=q, k=k, v=v, mask=mask, d_out=d_out.astype(dtype))


def mra_program(implementation: str, block_size: int, approx_mode: str, options: dict[str, Any]):
  """`(q, k, v, mask, d_out) -> (out, dq, dk, dv)` of `mra_attention`."""

  def program(q, k, v, mask, d_out):
    attend = lambda q, k, v: mra_jax.mra_attention(
      q,
      k,
      v,
      mask,
      block_size=block_size,
      block_per_row=2,
      approx_mode=approx_mode,
      impl=implementation,
      **options,
    )
    out, pullback = jax.vjp(attend, q, k, v)
    return (out, *pullback(d_out))

  return program


def relative_error(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if not np.all(np.isfinite(got)):
    return float("inf")
  return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-6))
