"""Block-sparse attention with an initial softmax state: the high-resolution core of MRA.

For every query i of query block r, with S(i) the keys of the key blocks c whose tile
(r, c) is selected, and (m0, l0, acc0) an initial online-softmax state (MRA-2 passes its
low-resolution term here, MRA-2-s passes an empty state):

    m_i   = max(m0_i, max_{j in S(i)} s_ij)                  s_ij = scale * q_i . k_j
    l_i   = l0_i   exp(m0_i - m_i) + sum_{j in S(i)} exp(s_ij - m_i)
    acc_i = acc0_i exp(m0_i - m_i) + sum_{j in S(i)} exp(s_ij - m_i) v_j
    out_i = acc_i / (l_i + eps)
    lse_i = m_i + log(l_i + eps)

`eps` is the published code's 1e-6 on the normaliser, taken on the scale of the running
maximum m_i, as there. The maximum carries no gradient (it cancels analytically); gradients
flow to q, k, v, l0 and acc0. Keys with `key_valid=False` get no weight.

This module holds the pure-`jnp` reference (`block_sparse_attention_reference`), written
for one head and lifted with `vmap`, computed in float32. Kernels are checked against it.

Tile ids are flat: t = r * Nk + c for query block r and key block c, int32, sorted
ascending within each (batch, head), without duplicates.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from pallas_kernels import backend as backend_lib
from pallas_kernels import block_sparse_kernels as kernels
from pallas_kernels import indexing, launch_spec

DEFAULT_EPS = 1e-6


def _one_head_reference(
  q_LqxD,
  k_LkxD,
  v_LkxD,
  tile_ids_K,
  key_valid_Lk,
  m0_Lq,
  l0_Lq,
  acc0_LqxD,
  *,
  block_size: int,
  scale: float,
  eps: float,
):
  """The reference for one (batch, head); every array float32 except ids/mask."""
  Lq, D = q_LqxD.shape
  Lk = k_LkxD.shape[0]
  Nq, Nk, bs = Lq // block_size, Lk // block_size, block_size
  rows_K = tile_ids_K // Nk
  cols_K = tile_ids_K % Nk

  q_KxBsxD = q_LqxD.reshape(Nq, bs, D)[rows_K]
  k_KxBsxD = k_LkxD.reshape(Nk, bs, D)[cols_K]
  v_KxBsxD = v_LkxD.reshape(Nk, bs, D)[cols_K]
  valid_KxBs = key_valid_Lk.reshape(Nk, bs)[cols_K]

  s_KxBsxBs = jnp.einsum("kid,kjd->kij", q_KxBsxD, k_KxBsxD) * scale
  s_KxBsxBs = jnp.where(valid_KxBs[:, None, :], s_KxBsxBs, -jnp.inf)

  # The per-query maximum over every selected tile of its block row (the published
  # `index_max`), merged with the initial state's maximum.
  tile_max_KxBs = jnp.max(s_KxBsxBs, axis=-1)
  row_max_NqxBs = jax.ops.segment_max(
    tile_max_KxBs, rows_K, num_segments=Nq, indices_are_sorted=True
  )
  m_Lq = jnp.maximum(m0_Lq, row_max_NqxBs.reshape(Lq))
  m_Lq = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m_Lq), m_Lq, 0.0))
  m_NqxBs = m_Lq.reshape(Nq, bs)

  p_KxBsxBs = jnp.exp(s_KxBsxBs - m_NqxBs[rows_K][:, :, None])
  num_NqxBsxD = jax.ops.segment_sum(
    jnp.einsum("kij,kjd->kid", p_KxBsxBs, v_KxBsxD),
    rows_K,
    num_segments=Nq,
    indices_are_sorted=True,
  )
  den_NqxBs = jax.ops.segment_sum(
    jnp.sum(p_KxBsxBs, axis=-1), rows_K, num_segments=Nq, indices_are_sorted=True
  )

  init_scale_Lq = jnp.exp(m0_Lq - m_Lq)
  l_Lq = l0_Lq * init_scale_Lq + den_NqxBs.reshape(Lq)
  acc_LqxD = acc0_LqxD * init_scale_Lq[:, None] + num_NqxBsxD.reshape(Lq, D)
  out_LqxD = acc_LqxD / (l_Lq + eps)[:, None]
  lse_Lq = m_Lq + jnp.log(l_Lq + eps)
  return out_LqxD, lse_Lq


def block_sparse_attention_reference(
  q_BxHxLqxD: jax.Array,
  k_BxHxLkxD: jax.Array,
  v_BxHxLkxD: jax.Array,
  tile_ids_BxHxK: jax.Array,
  key_valid_BxLk: jax.Array,
  m0_BxHxLq: jax.Array,
  l0_BxHxLq: jax.Array,
  acc0_BxHxLqxD: jax.Array,
  *,
  block_size: int,
  scale: float | None = None,
  eps: float = DEFAULT_EPS,
) -> tuple[jax.Array, jax.Array]:
  """Block-sparse attention from an initial softmax state, in pure `jnp` (see module doc).

  Args:
    q_BxHxLqxD: queries, any float dtype; Lq a multiple of `block_size`.
    k_BxHxLkxD: keys; Lk a multiple of `block_size`.
    v_BxHxLkxD: values.
    tile_ids_BxHxK: int32 flat tile ids `r * (Lk // block_size) + c`, sorted, unique.
    key_valid_BxLk: bool, False for padded keys (they get no weight).
    m0_BxHxLq: float32 initial running maximum (may be -inf: empty state).
    l0_BxHxLq: float32 initial normaliser, on the scale of `m0`.
    acc0_BxHxLqxD: float32 initial numerator, on the scale of `m0`.
    block_size: tokens per block (tile side).
    scale: logit scale; default `1 / sqrt(D)`.
    eps: added to the normaliser (the published code's 1e-6).

  Returns:
    `(out_BxHxLqxD, lse_BxHxLq)`, both float32.
  """
  D = q_BxHxLqxD.shape[-1]
  scale = D**-0.5 if scale is None else scale
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  one_head = lambda q, k, v, ids, valid, m0, l0, acc0: _one_head_reference(
    q, k, v, ids, valid, m0, l0, acc0, block_size=block_size, scale=scale, eps=eps
  )
  # heads share the key mask; batch elements share nothing.
  per_batch = jax.vmap(one_head, in_axes=(0, 0, 0, 0, None, 0, 0, 0))
  return jax.vmap(per_batch)(
    f32(q_BxHxLqxD),
    f32(k_BxHxLkxD),
    f32(v_BxHxLkxD),
    tile_ids_BxHxK,
    key_valid_BxLk.astype(bool),
    f32(m0_BxHxLq),
    f32(l0_BxHxLq),
    f32(acc0_BxHxLqxD),
  )


# ----------------------------------------------------------------------------------------
# The Pallas op: validation, layouts, custom_vjp.
# ----------------------------------------------------------------------------------------

_FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def _check_inputs(q, k, v, tile_ids, key_valid, m0, l0, acc0, block_size, backend):
  """Raises ValueError naming the first bad argument; runs before any kernel is built."""
  if q.ndim != 4:
    raise ValueError(f"q_BxHxLqxD must be rank 4, got {q.shape=}")
  B, H, Lq, D = q.shape
  if k.ndim != 4 or k.shape[:2] != (B, H) or k.shape[3] != D:
    raise ValueError(f"k_BxHxLkxD must be (B, H, Lk, D) = ({B}, {H}, Lk, {D}), got {k.shape=}")
  Lk = k.shape[2]
  if v.shape != k.shape:
    raise ValueError(f"v_BxHxLkxD must have k's shape {k.shape}, got {v.shape=}")
  for name, x in (("q_BxHxLqxD", q), ("k_BxHxLkxD", k), ("v_BxHxLkxD", v)):
    if not any(x.dtype == d for d in _FLOAT_DTYPES):
      raise ValueError(f"{name} must be float32, bfloat16 or float16, got {x.dtype=}")
  if not (q.dtype == k.dtype == v.dtype):
    raise ValueError(f"q, k, v must share a dtype, got {q.dtype=}, {k.dtype=}, {v.dtype=}")
  sizes = backend_lib.BLOCK_SIZES[backend]
  if block_size not in sizes:
    raise ValueError(f"block_size must be one of {sizes} on {backend=}, got {block_size=}")
  if Lq % block_size or Lk % block_size:
    raise ValueError(
      f"sequence lengths must be multiples of {block_size=}, got {Lq=} (q), {Lk=} (k)"
    )
  Nq, Nk = Lq // block_size, Lk // block_size
  if (
    tile_ids.ndim != 3
    or tile_ids.shape[:2] != (B, H)
    or not jnp.issubdtype(tile_ids.dtype, jnp.integer)
  ):
    raise ValueError(
      f"tile_ids_BxHxK must be integer (B, H, K) = ({B}, {H}, K), got "
      f"{tile_ids.shape=}, {tile_ids.dtype=}"
    )
  if tile_ids.shape[2] > Nq * Nk:
    raise ValueError(f"tile_ids_BxHxK holds more than Nq * Nk = {Nq * Nk} tiles: {tile_ids.shape=}")
  if key_valid.shape != (B, Lk):
    raise ValueError(f"key_valid_BxLk must be ({B}, {Lk}), got {key_valid.shape=}")
  if m0.shape != (B, H, Lq):
    raise ValueError(f"m0_BxHxLq must be ({B}, {H}, {Lq}), got {m0.shape=}")
  if l0.shape != (B, H, Lq):
    raise ValueError(f"l0_BxHxLq must be ({B}, {H}, {Lq}), got {l0.shape=}")
  if acc0.shape != (B, H, Lq, D):
    raise ValueError(f"acc0_BxHxLqxD must be ({B}, {H}, {Lq}, {D}), got {acc0.shape=}")


def _precision(dtype):
  # f32 inputs: IEEE f32 on every backend (the Triton lowering turns DEFAULT into TF32).
  return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None


def _make_op(*, B, H, Nq, Nk, block_size, scale, eps, backend, interpret):
  """The custom_vjp op on the kernel layouts (leading axis G = B * H)."""
  bs = block_size
  G = B * H
  launch = functools.partial(backend_lib.launcher(backend), interpret=interpret)
  f32 = jnp.float32
  sds = jax.ShapeDtypeStruct
  row_blk = lambda D: launch_spec.Block((None, bs, D), lambda g, i: (g, i, 0))
  head_blk = lambda L, D: launch_spec.Block((None, L, D), lambda g, i: (g, 0, 0))
  # Heads share their batch element's key mask. lax.div, not `//`: g >= 0, and floor
  # division lowers through `sign`, which Mosaic only lowers on a known TPU generation.
  batch = lambda g: jax.lax.div(g, H)
  kmask_rows_blk = launch_spec.Block((None, Nk, bs), lambda g, i: (batch(g), 0, 0))
  kmask_col_blk = launch_spec.Block((None, bs, 1), lambda g, i: (batch(g), i, 0))

  def forward(q, k, v, views, kmask_rows, m0, l0, acc0):
    Lq, D = q.shape[1:]
    Lk = k.shape[1]
    kernel = functools.partial(
      kernels.forward_kernel, block_size=bs, scale=scale, eps=eps, precision=_precision(q.dtype)
    )
    call = launch_spec.CallSpec(
      name="mra_block_sparse_fwd",
      grid=(G, Nq),
      index_arrays=(views.row_ptr_GxNq1, views.cols_by_row_GxK),
      operands=(q, k, v, kmask_rows, m0, l0, acc0),
      in_blocks=(
        row_blk(D),
        head_blk(Lk, D),
        head_blk(Lk, D),
        kmask_rows_blk,
        row_blk(1),
        row_blk(1),
        row_blk(D),
      ),
      out_shapes=(sds((G, Lq, D), f32), sds((G, Lq, 1), f32)),
      out_blocks=(row_blk(D), row_blk(1)),
    )
    return launch(kernel, call)

  @jax.custom_vjp
  def op(q, k, v, views, kmask_rows, kmask_col, m0, l0, acc0):
    del kmask_col  # only the backward pass reads the column layout
    out, lse = forward(q, k, v, views, kmask_rows, m0, l0, acc0)
    return out, lse

  def op_fwd(q, k, v, views, kmask_rows, kmask_col, m0, l0, acc0):
    out, lse = forward(q, k, v, views, kmask_rows, m0, l0, acc0)
    return (out, lse), (q, k, v, views, kmask_rows, kmask_col, m0, out, lse)

  def op_bwd(res, cotangents):
    q, k, v, views, kmask_rows, kmask_col, m0, out, lse = res
    dout, dlse = cotangents
    Lq, D = q.shape[1:]
    Lk = k.shape[1]
    # A cotangent on lse adds dlse * P to dS: fold it into delta (dS = P * (dP - delta)).
    delta = jnp.sum(dout * out, axis=-1, keepdims=True) - dlse
    do = dout.astype(q.dtype)
    precision = _precision(q.dtype)
    dq_call = launch_spec.CallSpec(
      name="mra_block_sparse_dq",
      grid=(G, Nq),
      index_arrays=(views.row_ptr_GxNq1, views.cols_by_row_GxK),
      operands=(q, k, v, kmask_rows, do, lse, delta),
      in_blocks=(
        row_blk(D),
        head_blk(Lk, D),
        head_blk(Lk, D),
        kmask_rows_blk,
        row_blk(D),
        row_blk(1),
        row_blk(1),
      ),
      out_shapes=(sds(q.shape, q.dtype),),
      out_blocks=(row_blk(D),),
    )
    (dq,) = launch(
      functools.partial(kernels.dq_kernel, block_size=bs, scale=scale, precision=precision), dq_call
    )
    dkv_call = launch_spec.CallSpec(
      name="mra_block_sparse_dkv",
      grid=(G, Nk),
      index_arrays=(views.col_ptr_GxNk1, views.rows_by_col_GxK),
      operands=(k, v, kmask_col, q, do, lse.reshape(G, Nq, bs), delta.reshape(G, Nq, bs)),
      in_blocks=(
        row_blk(D),
        row_blk(D),
        kmask_col_blk,
        head_blk(Lq, D),
        head_blk(Lq, D),
        head_blk(Nq, bs),
        head_blk(Nq, bs),
      ),
      out_shapes=(sds(k.shape, k.dtype), sds(v.shape, v.dtype)),
      out_blocks=(row_blk(D), row_blk(D)),
    )
    dk, dv = launch(
      functools.partial(kernels.dkv_kernel, block_size=bs, scale=scale, precision=precision),
      dkv_call,
    )
    # d out / d acc0 = exp(m0 - m) / (l + eps) = exp(m0 - lse); d lse / d l0 likewise.
    init_weight = jnp.exp(m0 - lse)
    dacc0 = dout * init_weight
    dl0 = -delta * init_weight
    return dq, dk, dv, None, None, None, None, dl0, dacc0

  op.defvjp(op_fwd, op_bwd)
  return op


def block_sparse_attention(
  q_BxHxLqxD: jax.Array,
  k_BxHxLkxD: jax.Array,
  v_BxHxLkxD: jax.Array,
  tile_ids_BxHxK: jax.Array,
  key_valid_BxLk: jax.Array,
  m0_BxHxLq: jax.Array,
  l0_BxHxLq: jax.Array,
  acc0_BxHxLqxD: jax.Array,
  *,
  block_size: int,
  scale: float | None = None,
  eps: float = DEFAULT_EPS,
  backend: str = "auto",
  interpret: Any = None,
) -> tuple[jax.Array, jax.Array]:
  """Block-sparse attention from an initial softmax state, as fused Pallas kernels.

  Same maths and arguments as `block_sparse_attention_reference` (see the module doc).
  Differentiable (custom VJP) in q, k, v, l0 and acc0; m0, tile_ids and key_valid get no
  gradient. The backward pass computes dQ row by row and dK/dV column by column from a
  transposed view of the tiles, so no output block has two writers.

  Args:
    q_BxHxLqxD: queries, float32 / bfloat16 / float16; Lq a multiple of `block_size`.
    k_BxHxLkxD: keys, q's dtype; Lk a multiple of `block_size`.
    v_BxHxLkxD: values, q's dtype.
    tile_ids_BxHxK: int flat tile ids `r * (Lk // block_size) + c`, sorted ascending and
      unique per (batch, head); rows may hold any number of tiles, including none.
    key_valid_BxLk: bool, False for padded keys.
    m0_BxHxLq: initial running maximum (-inf: empty state), cast to float32.
    l0_BxHxLq: initial normaliser on the scale of m0, cast to float32.
    acc0_BxHxLqxD: initial numerator on the scale of m0, cast to float32.
    block_size: tile side: 32 or 64 (and 128 on "mosaic_tpu").
    scale: logit scale; default `1 / sqrt(D)`.
    eps: added to the normaliser.
    backend: "auto" (gpu -> "triton", tpu -> "mosaic_tpu", cpu -> the triton kernel in
      interpret mode), "triton" or "mosaic_tpu".
    interpret: None (interpret iff not on an accelerator), a bool, or for "mosaic_tpu" a
      `pltpu.InterpretParams` (TPU interpret mode).

  Returns:
    `(out_BxHxLqxD, lse_BxHxLq)`, both float32 whatever q's dtype (the caller combines them
    with other float32 terms; cast afterwards).

  Raises:
    ValueError: on bad shapes, dtypes, block size or backend, before any kernel is built.
  """
  backend, interpret = backend_lib.resolve(backend, interpret)
  q, k, v = q_BxHxLqxD, k_BxHxLkxD, v_BxHxLkxD
  _check_inputs(
    q,
    k,
    v,
    tile_ids_BxHxK,
    key_valid_BxLk,
    m0_BxHxLq,
    l0_BxHxLq,
    acc0_BxHxLqxD,
    block_size,
    backend,
  )
  B, H, Lq, D = q.shape
  Lk = k.shape[2]
  Nq, Nk, bs, G = Lq // block_size, Lk // block_size, block_size, B * H
  scale = D**-0.5 if scale is None else float(scale)
  Dp = backend_lib.padded_head_dim(backend, D)
  # Zero head-dim padding changes no dot product; the padded output columns are dropped.
  pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, Dp - D))) if Dp != D else x
  f32 = lambda x: jnp.asarray(x, jnp.float32)

  tile_ids_GxK = tile_ids_BxHxK.reshape(G, -1)
  if tile_ids_GxK.shape[1] == 0:
    # No tile at all: a one-entry index row that no loop ever reads keeps shapes non-empty.
    tile_ids_GxK = jnp.zeros((G, 1), jnp.int32)
    views = indexing.build_tile_views(tile_ids_GxK, num_q_blocks=Nq, num_k_blocks=Nk)
    views = views._replace(
      row_ptr_GxNq1=jnp.zeros_like(views.row_ptr_GxNq1),
      col_ptr_GxNk1=jnp.zeros_like(views.col_ptr_GxNk1),
    )
  else:
    views = indexing.build_tile_views(tile_ids_GxK, num_q_blocks=Nq, num_k_blocks=Nk)
  valid = jax.lax.stop_gradient(key_valid_BxLk.astype(jnp.float32))
  op = _make_op(
    B=B,
    H=H,
    Nq=Nq,
    Nk=Nk,
    block_size=bs,
    scale=scale,
    eps=float(eps),
    backend=backend,
    interpret=interpret,
  )
  out_GxLqxDp, lse_GxLqx1 = op(
    pad(q.reshape(G, Lq, D)),
    pad(k.reshape(G, Lk, D)),
    pad(v.reshape(G, Lk, D)),
    views,
    valid.reshape(B, Nk, bs),
    valid.reshape(B, Lk, 1),
    jax.lax.stop_gradient(f32(m0_BxHxLq)).reshape(G, Lq, 1),
    f32(l0_BxHxLq).reshape(G, Lq, 1),
    pad(f32(acc0_BxHxLqxD).reshape(G, Lq, D)),
  )
  out = out_GxLqxDp[:, :, :D].reshape(B, H, Lq, D)
  return out, lse_GxLqx1.reshape(B, H, Lq)
