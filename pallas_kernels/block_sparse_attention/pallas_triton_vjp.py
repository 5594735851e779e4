"""The backward pass of `pallas_triton`: dQ and dK/dV kernels (Pallas Triton) and the VJP.

With P = exp(s - lse) and delta = rowsum(dO * out) - dlse (a cotangent on lse adds
dlse * P to dS, so it folds into delta):

    dS = P (dO V^T - delta),  dQ = scale dS K,  dK = scale dS^T Q,  dV = P^T dO,
    dacc0 = dO exp(m0 - lse), dl0 = -delta exp(m0 - lse).

dQ runs over query rows as the forward does (`Static.rows_per_program`), walking each row's
tiles. dK/dV run over key blocks, grid `(G, Nk)`, walking each column's tiles from the column
view, so every output block has one writer and no atomics are needed; with grouped-query
attention the column is walked over (tile, query head) pairs (`index_views.per_group_member`),
so dK and dV sum over the group inside the program. Their layouts: the program's key block,
the whole head's Q/dO (the group stacked, `layouts`), the key mask as a column `(bs, 1)`, and
the per-query vectors (lse, delta) as rows `(Nq * group, bs)`, so that the transposed score
tile `(keys, queries)` broadcasts against them without an in-kernel transpose. Causal: the
tiles that reach the diagonal (a row's last, a column's first) run in their own loop, the
only one that masks by position.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.block_sparse_attention import base, index_views, pallas_triton_dots
from pallas_kernels.block_sparse_attention import pallas_triton_common as common

dot_nt, dot_nn = pallas_triton_dots.dot_nt, pallas_triton_dots.dot_nn


def _dq_kernel(
  offsets_ref,
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
  static: common.Static,
):
  """dQ of one program's query rows: sum over its block's tiles of `dS @ K`."""
  bs, precision, scale = static.block_size, static.dots, static.scale
  R = q_ref.shape[0]
  first = pl.program_id(1) * R  # see the forward kernel
  r = jax.lax.div(first, static.group * bs)
  start, stop = offsets_ref[r], offsets_ref[r + 1]
  q_RxD, do_RxD = q_ref[...], do_ref[...]
  lse_Rx1, delta_Rx1 = lse_ref[...], delta_ref[...]

  def body(t, dq_RxD, masked):
    c = cols_ref[t]
    k_BsxD = k_ref[pl.ds(pl.multiple_of(c * bs, bs), bs), :]
    v_BsxD = v_ref[pl.ds(pl.multiple_of(c * bs, bs), bs), :]
    keep_RxBs = kmask_ref[pl.ds(c, 1), :] > 0.5
    if masked:
      keep_RxBs = keep_RxBs & common.causal_keep(first, R, r, c, bs, rows_are_queries=True)
    s_RxBs = jnp.where(keep_RxBs, dot_nt(q_RxD, k_BsxD, precision) * scale, base.MASK_VALUE)
    # lse is finite (log(eps) for a query without keys), so masked keys get exp(MASK - lse) = 0.
    p_RxBs = jnp.exp(s_RxBs - lse_Rx1)
    dp_RxBs = dot_nt(do_RxD, v_BsxD, precision)
    ds_RxBs = p_RxBs * (dp_RxBs - delta_Rx1)
    return dq_RxD + dot_nn(ds_RxBs.astype(k_BsxD.dtype), k_BsxD, precision)

  split = offsets_ref[static.num_q_blocks + 1 + r] if static.causal else None
  dq_RxD = common.loop_tiles(
    start, stop, split, body, jnp.zeros(q_RxD.shape, jnp.float32), masked_first=False
  )
  dq_ref[...] = (dq_RxD * scale).astype(dq_ref.dtype)


def _dkv_kernel(
  offsets_ref,
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
  static: common.Static,
  two_passes: bool,
):
  """dK, dV of one key block (or part of one) from its column of tiles.

  The column's entries are virtual query blocks `r * group + i` (query head i of block r,
  `index_views.per_group_member`), so a kv head's programs sum over its group. Causal: the
  column's first entries, up to `col_split` (r <= c), mask by position. `two_passes` walks
  the column once for dV and once for dK, so that only one float32 accumulator is live at a
  time (`Static.dkv_two_passes`).
  """
  bs, precision, scale, group = static.block_size, static.dots, static.scale, static.group
  rows = k_ref.shape[0]
  first = pl.program_id(1) * rows  # the program's first key row (it may hold part of a block)
  c = jax.lax.div(first, bs)
  start, stop = offsets_ref[c], offsets_ref[c + 1]
  k_BsxD, v_BsxD = k_ref[...], v_ref[...]
  valid_Bsx1 = kmask_ref[...] > 0.5

  def tile(t, masked):
    """The column's t-th query block and this block's transposed probabilities."""
    vr = rows_ref[t]  # virtual query block: rows vr * bs of the stacked Q/dO
    q_BsxD = q_ref[pl.ds(pl.multiple_of(vr * bs, bs), bs), :]
    do_BsxD = do_ref[pl.ds(pl.multiple_of(vr * bs, bs), bs), :]
    lse_1xBs = lse_ref[pl.ds(vr, 1), :]
    delta_1xBs = delta_ref[pl.ds(vr, 1), :]
    keep_BsxBs = valid_Bsx1
    if masked:
      r = jax.lax.div(vr, group) if group > 1 else vr
      keep_BsxBs = keep_BsxBs & common.causal_keep(first, rows, c, r, bs, rows_are_queries=False)
    # Transposed tile: rows are this block's keys, columns the query block's queries.
    sT_BsxBs = jnp.where(keep_BsxBs, dot_nt(k_BsxD, q_BsxD, precision) * scale, base.MASK_VALUE)
    pT_BsxBs = jnp.exp(sT_BsxBs - lse_1xBs)
    return q_BsxD, do_BsxD, delta_1xBs, pT_BsxBs

  def dv_step(dv_BsxD, pT_BsxBs, do_BsxD):
    return dv_BsxD + dot_nn(pT_BsxBs.astype(do_BsxD.dtype), do_BsxD, precision)

  def dk_step(dk_BsxD, pT_BsxBs, q_BsxD, do_BsxD, delta_1xBs):
    dpT_BsxBs = dot_nt(v_BsxD, do_BsxD, precision)
    dsT_BsxBs = pT_BsxBs * (dpT_BsxBs - delta_1xBs)
    return dk_BsxD + dot_nn(dsT_BsxBs.astype(q_BsxD.dtype), q_BsxD, precision)

  def body(t, carry, masked):
    dk_BsxD, dv_BsxD = carry
    q_BsxD, do_BsxD, delta_1xBs, pT_BsxBs = tile(t, masked)
    dv_BsxD = dv_step(dv_BsxD, pT_BsxBs, do_BsxD)
    return dk_step(dk_BsxD, pT_BsxBs, q_BsxD, do_BsxD, delta_1xBs), dv_BsxD

  def dv_body(t, dv_BsxD, masked):
    _, do_BsxD, _, pT_BsxBs = tile(t, masked)
    return dv_step(dv_BsxD, pT_BsxBs, do_BsxD)

  def dk_body(t, dk_BsxD, masked):
    q_BsxD, do_BsxD, delta_1xBs, pT_BsxBs = tile(t, masked)
    return dk_step(dk_BsxD, pT_BsxBs, q_BsxD, do_BsxD, delta_1xBs)

  def walk(step, init):
    """`step` over the column, the diagonal-reaching entries (causal) in a masked loop."""
    split = offsets_ref[static.num_k_blocks + 1 + c] if static.causal else None
    return common.loop_tiles(start, stop, split, step, init, masked_first=True)

  zeros_BsxD = jnp.zeros(k_BsxD.shape, jnp.float32)
  if two_passes:
    # One accumulator per loop: the column is walked twice and P^T computed twice.
    dv_BsxD = walk(dv_body, zeros_BsxD)
    dk_BsxD = walk(dk_body, zeros_BsxD)
  else:
    dk_BsxD, dv_BsxD = walk(body, (zeros_BsxD, zeros_BsxD))
  dk_ref[...] = (dk_BsxD * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv_BsxD.astype(dv_ref.dtype)


def attention_bwd(static, residuals, cotangents):
  """The custom-VJP backward of `pallas_triton._attention` (G = B * Hk layouts).

  Args:
    static: the op's `pallas_triton_common.Static` settings.
    residuals: `(q, k, v, views, kmask_rows, kmask_col, m0, out, lse)` of the forward, the
      query side's rows stacked by group (`layouts`).
    cotangents: `(dout, dlse)`, float32.

  Returns:
    Cotangents of `_attention`'s array arguments (None for views, masks and m0).
  """
  q, k, v, views, kmask_rows, kmask_col, m0, out, lse = residuals
  dout, dlse = cotangents
  G, Lr, _ = q.shape
  Lk = k.shape[1]
  bs = static.block_size
  delta = jnp.sum(dout * out, axis=-1, keepdims=True) - dlse
  do = dout.astype(q.dtype)
  K = views.cols_by_row_GxK.shape[1]
  dq = common.launch(
    static,
    functools.partial(_dq_call, q.shape, q.dtype, Lk, K),
    (common.row_offsets(views, static), views.cols_by_row_GxK, q, k, v, kmask_rows, do, lse, delta),
  )
  members = index_views.per_group_member(views, static.group)
  dk, dv = common.launch(
    static,
    functools.partial(_dkv_call, q.shape, q.dtype, Lk, members.rows_by_col_GxK.shape[1]),
    (
      common.column_offsets(members, static),
      members.rows_by_col_GxK,
      k,
      v,
      kmask_col,
      q,
      do,
      lse.reshape(G, Lr // bs, bs),
      delta.reshape(G, Lr // bs, bs),
    ),
  )
  # d out / d acc0 = exp(m0 - m) / (l + eps) = exp(m0 - lse); d lse / d l0 likewise.
  init_weight = jnp.exp(m0 - lse)
  return dq, dk, dv, None, None, None, None, -delta * init_weight, dout * init_weight


def _dq_call(q_shape, dtype, Lk: int, K: int, static: common.Static):
  """The dQ `pallas_call`: grid over query rows, each program walking its block's row."""
  G, Lr, D = q_shape
  bs, Nk = static.block_size, Lk // static.block_size
  rows = static.rows_per_program(D, "dq")  # `Static.rows_per_program`
  row = lambda n: pl.BlockSpec((None, n), lambda g, i: (g, 0))
  q_blk = lambda d: pl.BlockSpec((None, rows, d), lambda g, i: (g, i, 0))
  whole = lambda n, d: pl.BlockSpec((None, n, d), lambda g, i: (g, 0, 0))
  batch = lambda g: jax.lax.div(g, static.num_heads)  # g >= 0; `//` lowers through `sign`
  return pl.pallas_call(
    functools.partial(_dq_kernel, static=static),
    out_shape=jax.ShapeDtypeStruct(q_shape, dtype),
    grid=(G, Lr // rows),
    in_specs=[
      row(static.offsets_length("row")),
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
  G, Lr, D = q_shape
  bs = static.block_size
  rows = static.rows_per_program(D, "dkv")  # `Static.rows_per_program`
  row = lambda n: pl.BlockSpec((None, n), lambda g, i: (g, 0))
  k_blk = lambda d: pl.BlockSpec((None, rows, d), lambda g, i: (g, i, 0))
  whole = lambda n, d: pl.BlockSpec((None, n, d), lambda g, i: (g, 0, 0))
  batch = lambda g: jax.lax.div(g, static.num_heads)
  kernel = functools.partial(_dkv_kernel, static=static, two_passes=static.dkv_two_passes(D))
  kv_shape = jax.ShapeDtypeStruct((G, Lk, D), dtype)
  return pl.pallas_call(
    kernel,
    out_shape=(kv_shape, kv_shape),
    grid=(G, Lk // rows),
    in_specs=[
      row(static.offsets_length("column")),
      row(K),
      k_blk(D),
      k_blk(D),
      pl.BlockSpec((None, rows, 1), lambda g, i: (batch(g), i, 0)),
      whole(Lr, D),
      whole(Lr, D),
      whole(Lr // bs, bs),
      whole(Lr // bs, bs),
    ],
    out_specs=(k_blk(D), k_blk(D)),
    interpret=static.interpret,
    compiler_params=static.launch_params(D, "dkv"),
    name="mra_block_sparse_dkv",
  )
