"""The backward pass of `pallas_triton`: dQ and dK/dV kernels (Pallas Triton) and the VJP.

With P = exp(s - lse) and delta = rowsum(dO * out) - dlse (a cotangent on lse adds
dlse * P to dS, so it folds into delta):

    dS = P (dO V^T - delta),  dQ = scale dS K,  dK = scale dS^T Q,  dV = P^T dO,
    dacc0 = dO exp(m0 - lse), dl0 = -delta exp(m0 - lse).

dQ runs over query blocks, grid `(G, Nq)`, walking each row's tiles as the forward does.
dK/dV run over key blocks, grid `(G, Nk)`, walking each column's tiles from the column view,
so every output block has one writer and no atomics are needed. Their layouts: the
program's key block, the whole head's Q/dO, the key mask as a column `(bs, 1)`, and the
per-query vectors (lse, delta) as rows `(Nq, bs)`, so that the transposed score tile
`(keys, queries)` broadcasts against them without an in-kernel transpose.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.block_sparse_attention import base, pallas_triton_dots
from pallas_kernels.block_sparse_attention import pallas_triton_common as common

dot_nt, dot_nn = pallas_triton_dots.dot_nt, pallas_triton_dots.dot_nn


def _dq_kernel(
  row_ptr_ref,
  cols_ref,
  q_ref,
  k_ref,
  v_ref,
  kmask_ref,
  do_ref,
  lse_ref,
  delta_ref,
  dq_ref,
  *,
  block_size: int,
  scale: float,
  precision,
):
  """dQ of one query block: sum over its tiles of `dS @ K`."""
  bs = block_size
  r = jax.lax.div(pl.program_id(1), block_size // q_ref.shape[0])  # see the forward kernel
  start, stop = row_ptr_ref[r], row_ptr_ref[r + 1]
  q_BsxD, do_BsxD = q_ref[...], do_ref[...]
  lse_Bsx1, delta_Bsx1 = lse_ref[...], delta_ref[...]

  def body(t, dq_BsxD):
    c = cols_ref[t]
    k_BsxD = k_ref[pl.ds(pl.multiple_of(c * bs, bs), bs), :]
    v_BsxD = v_ref[pl.ds(pl.multiple_of(c * bs, bs), bs), :]
    valid_1xBs = kmask_ref[pl.ds(c, 1), :] > 0.5
    s_BsxBs = jnp.where(valid_1xBs, dot_nt(q_BsxD, k_BsxD, precision) * scale, base.MASK_VALUE)
    p_BsxBs = jnp.exp(s_BsxBs - lse_Bsx1)
    dp_BsxBs = dot_nt(do_BsxD, v_BsxD, precision)
    ds_BsxBs = p_BsxBs * (dp_BsxBs - delta_Bsx1)
    return dq_BsxD + dot_nn(ds_BsxBs.astype(k_BsxD.dtype), k_BsxD, precision)

  dq_BsxD = jax.lax.fori_loop(start, stop, body, jnp.zeros(q_BsxD.shape, jnp.float32))
  dq_ref[...] = (dq_BsxD * scale).astype(dq_ref.dtype)


def _dkv_kernel(
  col_ptr_ref,
  rows_ref,
  k_ref,
  v_ref,
  kmask_ref,
  q_ref,
  do_ref,
  lse_ref,
  delta_ref,
  dk_ref,
  dv_ref,
  *,
  block_size: int,
  scale: float,
  precision,
  two_passes: bool,
):
  """dK, dV of one key block (or half block) from its column of tiles.

  `two_passes` walks the column once for dV and once for dK, so that only one float32
  accumulator is live at a time (`Static.dkv_two_passes`).
  """
  bs = block_size
  c = jax.lax.div(pl.program_id(1), block_size // k_ref.shape[0])  # key rows: part of a block
  start, stop = col_ptr_ref[c], col_ptr_ref[c + 1]
  k_BsxD, v_BsxD = k_ref[...], v_ref[...]
  valid_Bsx1 = kmask_ref[...] > 0.5

  def tile(t):
    """The column's t-th query block and this block's transposed probabilities."""
    r = rows_ref[t]
    q_BsxD = q_ref[pl.ds(pl.multiple_of(r * bs, bs), bs), :]
    do_BsxD = do_ref[pl.ds(pl.multiple_of(r * bs, bs), bs), :]
    lse_1xBs = lse_ref[pl.ds(r, 1), :]
    delta_1xBs = delta_ref[pl.ds(r, 1), :]
    # Transposed tile: rows are this block's keys, columns the query block's queries.
    sT_BsxBs = jnp.where(valid_Bsx1, dot_nt(k_BsxD, q_BsxD, precision) * scale, base.MASK_VALUE)
    pT_BsxBs = jnp.exp(sT_BsxBs - lse_1xBs)
    return q_BsxD, do_BsxD, delta_1xBs, pT_BsxBs

  def dv_step(dv_BsxD, pT_BsxBs, do_BsxD):
    return dv_BsxD + dot_nn(pT_BsxBs.astype(do_BsxD.dtype), do_BsxD, precision)

  def dk_step(dk_BsxD, pT_BsxBs, q_BsxD, do_BsxD, delta_1xBs):
    dpT_BsxBs = dot_nt(v_BsxD, do_BsxD, precision)
    dsT_BsxBs = pT_BsxBs * (dpT_BsxBs - delta_1xBs)
    return dk_BsxD + dot_nn(dsT_BsxBs.astype(q_BsxD.dtype), q_BsxD, precision)

  def body(t, carry):
    dk_BsxD, dv_BsxD = carry
    q_BsxD, do_BsxD, delta_1xBs, pT_BsxBs = tile(t)
    dv_BsxD = dv_step(dv_BsxD, pT_BsxBs, do_BsxD)
    return dk_step(dk_BsxD, pT_BsxBs, q_BsxD, do_BsxD, delta_1xBs), dv_BsxD

  def dv_body(t, dv_BsxD):
    _, do_BsxD, _, pT_BsxBs = tile(t)
    return dv_step(dv_BsxD, pT_BsxBs, do_BsxD)

  def dk_body(t, dk_BsxD):
    q_BsxD, do_BsxD, delta_1xBs, pT_BsxBs = tile(t)
    return dk_step(dk_BsxD, pT_BsxBs, q_BsxD, do_BsxD, delta_1xBs)

  zeros_BsxD = jnp.zeros(k_BsxD.shape, jnp.float32)
  if two_passes:
    # One accumulator per loop: the column is walked twice and P^T computed twice.
    dv_BsxD = jax.lax.fori_loop(start, stop, dv_body, zeros_BsxD)
    dk_BsxD = jax.lax.fori_loop(start, stop, dk_body, zeros_BsxD)
  else:
    dk_BsxD, dv_BsxD = jax.lax.fori_loop(start, stop, body, (zeros_BsxD, zeros_BsxD))
  dk_ref[...] = (dk_BsxD * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv_BsxD.astype(dv_ref.dtype)


def attention_bwd(static, residuals, cotangents):
  """The custom-VJP backward of `pallas_triton._attention` (G = B * H layouts).

  Args:
    static: the op's `pallas_triton_common.Static` settings.
    residuals: `(q, k, v, views, kmask_rows, kmask_col, m0, out, lse)` of the forward.
    cotangents: `(dout, dlse)`, float32.

  Returns:
    Cotangents of `_attention`'s array arguments (None for views, masks and m0).
  """
  q, k, v, views, kmask_rows, kmask_col, m0, out, lse = residuals
  dout, dlse = cotangents
  G, Lq, _ = q.shape
  Lk = k.shape[1]
  bs, Nq = static.block_size, Lq // static.block_size
  delta = jnp.sum(dout * out, axis=-1, keepdims=True) - dlse
  do = dout.astype(q.dtype)
  K = views.cols_by_row_GxK.shape[1]
  dq = common.launch(
    static,
    functools.partial(_dq_call, q.shape, q.dtype, Lk, K),
    (views.row_ptr_GxNq1, views.cols_by_row_GxK, q, k, v, kmask_rows, do, lse, delta),
  )
  dk, dv = common.launch(
    static,
    functools.partial(_dkv_call, q.shape, q.dtype, Lk, K),
    (
      views.col_ptr_GxNk1,
      views.rows_by_col_GxK,
      k,
      v,
      kmask_col,
      q,
      do,
      lse.reshape(G, Nq, bs),
      delta.reshape(G, Nq, bs),
    ),
  )
  # d out / d acc0 = exp(m0 - m) / (l + eps) = exp(m0 - lse); d lse / d l0 likewise.
  init_weight = jnp.exp(m0 - lse)
  return dq, dk, dv, None, None, None, None, -delta * init_weight, dout * init_weight


def _dq_call(q_shape, dtype, Lk: int, K: int, static: common.Static):
  """The dQ `pallas_call`: grid over query rows, each program walking its block's row."""
  G, Lq, D = q_shape
  bs, Nq, Nk = static.block_size, Lq // static.block_size, Lk // static.block_size
  rows = static.rows_per_program(D, "dq")  # `Static.rows_per_program`
  row = lambda n: pl.BlockSpec((None, n), lambda g, i: (g, 0))
  q_blk = lambda d: pl.BlockSpec((None, rows, d), lambda g, i: (g, i, 0))
  whole = lambda n, d: pl.BlockSpec((None, n, d), lambda g, i: (g, 0, 0))
  batch = lambda g: jax.lax.div(g, static.num_heads)  # g >= 0; `//` lowers through `sign`
  return pl.pallas_call(
    functools.partial(_dq_kernel, block_size=bs, scale=static.scale, precision=static.dots),
    out_shape=jax.ShapeDtypeStruct(q_shape, dtype),
    grid=(G, Lq // rows),
    in_specs=[
      row(Nq + 1),
      row(K),
      q_blk(D),
      whole(Lk, D),
      whole(Lk, D),
      pl.BlockSpec((None, Nk, bs), lambda g, i: (batch(g), 0, 0)),
      q_blk(D),
      q_blk(1),
      q_blk(1),
    ],
    out_specs=q_blk(D),
    interpret=static.interpret,
    compiler_params=static.launch_params(D, "dq"),
    name="mra_block_sparse_dq",
  )


def _dkv_call(q_shape, dtype, Lk: int, K: int, static: common.Static):
  """The dK/dV `pallas_call`: grid over key rows, each program walking its block's column."""
  G, Lq, D = q_shape
  bs, Nq, Nk = static.block_size, Lq // static.block_size, Lk // static.block_size
  rows = static.rows_per_program(D, "dkv")  # `Static.rows_per_program`
  row = lambda n: pl.BlockSpec((None, n), lambda g, i: (g, 0))
  k_blk = lambda d: pl.BlockSpec((None, rows, d), lambda g, i: (g, i, 0))
  whole = lambda n, d: pl.BlockSpec((None, n, d), lambda g, i: (g, 0, 0))
  batch = lambda g: jax.lax.div(g, static.num_heads)
  kernel = functools.partial(
    _dkv_kernel,
    block_size=bs,
    scale=static.scale,
    precision=static.dots,
    two_passes=static.dkv_two_passes(D),
  )
  kv_shape = jax.ShapeDtypeStruct((G, Lk, D), dtype)
  return pl.pallas_call(
    kernel,
    out_shape=(kv_shape, kv_shape),
    grid=(G, Lk // rows),
    in_specs=[
      row(Nk + 1),
      row(K),
      k_blk(D),
      k_blk(D),
      pl.BlockSpec((None, rows, 1), lambda g, i: (batch(g), i, 0)),
      whole(Lq, D),
      whole(Lq, D),
      whole(Nq, bs),
      whole(Nq, bs),
    ],
    out_specs=(k_blk(D), k_blk(D)),
    interpret=static.interpret,
    compiler_params=static.launch_params(D, "dkv"),
    name="mra_block_sparse_dkv",
  )
