"""The backward pass of `pallas_mosaic_tpu`: dQ and dK/dV kernels (Mosaic TPU) and the VJP.

With P = exp(s - lse) and delta = rowsum(dO * out) - dlse (a cotangent on lse adds
dlse * P to dS, so it folds into delta):

    dS = P (dO V^T - delta),  dQ = scale dS K,  dK = scale dS^T Q,  dV = P^T dO,
    dacc0 = dO exp(m0 - lse), dl0 = -delta exp(m0 - lse).

dQ runs over query blocks, grid `(G, Nq)`, walking each row's tiles as the forward does
(with grouped-query attention, the group's stacked rows of the block). dK/dV run over key
blocks, grid `(G, Nk)`, walking each column's tiles from the column view, so every output
block has one writer (no output block is revisited: both grid axes are "parallel"); with
grouped-query attention the column is walked over (tile, query head) pairs
(`index_views.per_group_member`), so dK and dV sum over the group in the program. Both
stream as the forward does: dQ copies the row's K/V tiles, dK/dV the column's Q/dO tiles
with their lse and delta rows `(1, bs)`, which broadcast against the transposed score tile
`(keys, queries)` as they are. Causal: the tiles that reach the diagonal (a row's last, a
column's first) run in a loop of their own, the only one that masks by position.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.block_sparse_attention import base, index_views
from pallas_kernels.block_sparse_attention import pallas_mosaic_tpu_common as common

# None: Mosaic's default scoped-VMEM limit (as the forward's `VMEM_LIMIT_BYTES`).
VMEM_LIMIT_BYTES = None


def _dq_kernel(
  offsets_hbm,
  cols_hbm,
  q_ref,
  k_hbm,
  v_hbm,
  kmask_hbm,
  do_ref,
  lse_ref,
  delta_ref,
  dq_ref,
  offsets_smem,
  cols_smem,
  index_sem,
  k_buf,
  v_buf,
  kmask_buf,
  tile_sems,
  *,
  static: common.Static,
  precision,
):
  """dQ of one query block (the group's rows): sum over its tiles of `dS @ K`, K/V streamed."""
  bs, scale = static.block_size, static.scale
  R = q_ref.shape[0]
  g, r = pl.program_id(0), pl.program_id(1)
  b = jax.lax.div(g, static.num_heads)
  offsets = common.read_offsets(offsets_hbm, g, r, offsets_smem, index_sem)
  q_RxD, do_RxD = q_ref[...], do_ref[...]
  lse_Rx1 = common.rows_to_column(lse_ref)
  delta_Rx1 = common.rows_to_column(delta_ref)

  def tile_copies(c, slot):
    rows = pl.ds(pl.multiple_of(c * bs, bs), bs)
    return [
      pltpu.make_async_copy(k_hbm.at[g, rows], k_buf.at[slot], tile_sems.at[0, slot]),
      pltpu.make_async_copy(v_hbm.at[g, rows], v_buf.at[slot], tile_sems.at[1, slot]),
      pltpu.make_async_copy(kmask_hbm.at[b, c], kmask_buf.at[slot], tile_sems.at[2, slot]),
    ]

  def compute(slot, dq_RxD, c=None):
    """One tile; `c` (its key block) given: one that reaches the diagonal, masked."""
    k_BsxD, v_BsxD = k_buf[slot], v_buf[slot]
    keep_RxBs = kmask_buf[slot] > 0.5
    if c is not None:
      keep_RxBs = keep_RxBs & common.causal_keep(R, r, c, bs, rows_are_queries=True)
    s_RxBs = jnp.where(keep_RxBs, common.dot_nt(q_RxD, k_BsxD, precision) * scale, base.MASK_VALUE)
    # lse is finite (log(eps) for a query without keys): masked keys get exp(MASK - lse) = 0.
    p_RxBs = jnp.exp(s_RxBs - lse_Rx1)
    dp_RxBs = common.dot_nt(do_RxD, v_BsxD, precision)
    ds_RxBs = p_RxBs * (dp_RxBs - delta_Rx1)
    return dq_RxD + common.dot_nn(ds_RxBs.astype(k_BsxD.dtype), k_BsxD, precision)

  dq_RxD = common.stream_tiles(
    g,
    offsets[0],
    offsets[-1],
    cols_hbm,
    cols_smem,
    index_sem,
    tile_copies,
    compute,
    jnp.zeros(q_RxD.shape, jnp.float32),
    # Causal: the row's tiles from the split on (c >= r) are masked.
    split=offsets[1] if static.causal else None,
    masked_compute=compute,
  )
  dq_ref[...] = (dq_RxD * scale).astype(dq_ref.dtype)


def _dkv_kernel(
  offsets_hbm,
  rows_hbm,
  k_ref,
  v_ref,
  kmask_ref,
  q_hbm,
  do_hbm,
  lse_hbm,
  delta_hbm,
  dk_ref,
  dv_ref,
  offsets_smem,
  rows_smem,
  index_sem,
  q_buf,
  do_buf,
  lse_buf,
  delta_buf,
  tile_sems,
  *,
  static: common.Static,
  precision,
):
  """dK, dV of one key block from its column of tiles, Q/dO streamed tile by tile.

  The column's entries are virtual query blocks `r * group + i` (query head i of block r,
  `index_views.per_group_member`): rows of the stacked Q/dO and rows of lse/delta.
  """
  bs, scale, group = static.block_size, static.scale, static.group
  g, c = pl.program_id(0), pl.program_id(1)
  offsets = common.read_offsets(offsets_hbm, g, c, offsets_smem, index_sem)
  k_BsxD, v_BsxD = k_ref[...], v_ref[...]
  valid_Bsx1 = common.row_to_column(kmask_ref[...]) > 0.5

  def tile_copies(vr, slot):
    rows = pl.ds(pl.multiple_of(vr * bs, bs), bs)
    return [
      pltpu.make_async_copy(q_hbm.at[g, rows], q_buf.at[slot], tile_sems.at[0, slot]),
      pltpu.make_async_copy(do_hbm.at[g, rows], do_buf.at[slot], tile_sems.at[1, slot]),
      pltpu.make_async_copy(lse_hbm.at[g, vr], lse_buf.at[slot], tile_sems.at[2, slot]),
      pltpu.make_async_copy(delta_hbm.at[g, vr], delta_buf.at[slot], tile_sems.at[3, slot]),
    ]

  def compute(slot, carry, vr=None):
    """One tile; `vr` (its virtual query block) given: one on the diagonal, masked."""
    dk_BsxD, dv_BsxD = carry
    q_BsxD, do_BsxD = q_buf[slot], do_buf[slot]
    lse_1xBs, delta_1xBs = lse_buf[slot], delta_buf[slot]
    keep_BsxBs = valid_Bsx1
    if vr is not None:
      r = jax.lax.div(vr, group) if group > 1 else vr
      keep_BsxBs = keep_BsxBs & common.causal_keep(bs, c, r, bs, rows_are_queries=False)
    # Transposed tile: rows are this block's keys, columns the query block's queries.
    sT_BsxBs = jnp.where(
      keep_BsxBs, common.dot_nt(k_BsxD, q_BsxD, precision) * scale, base.MASK_VALUE
    )
    pT_BsxBs = jnp.exp(sT_BsxBs - lse_1xBs)
    dv_BsxD = dv_BsxD + common.dot_nn(pT_BsxBs.astype(do_BsxD.dtype), do_BsxD, precision)
    dpT_BsxBs = common.dot_nt(v_BsxD, do_BsxD, precision)
    dsT_BsxBs = pT_BsxBs * (dpT_BsxBs - delta_1xBs)
    dk_BsxD = dk_BsxD + common.dot_nn(dsT_BsxBs.astype(q_BsxD.dtype), q_BsxD, precision)
    return dk_BsxD, dv_BsxD

  zeros_BsxD = jnp.zeros(k_BsxD.shape, jnp.float32)
  dk_BsxD, dv_BsxD = common.stream_tiles(
    g,
    offsets[0],
    offsets[-1],
    rows_hbm,
    rows_smem,
    index_sem,
    tile_copies,
    compute,
    (zeros_BsxD, zeros_BsxD),
    # Causal: the column's tiles up to the split (r <= c) are masked.
    split=offsets[1] if static.causal else None,
    masked_compute=compute,
    masked_first=True,
  )
  dk_ref[...] = (dk_BsxD * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv_BsxD.astype(dv_ref.dtype)


def _compiler_params(vmem_limit_bytes):
  return pltpu.CompilerParams(
    dimension_semantics=("parallel", "parallel"),
    vmem_limit_bytes=vmem_limit_bytes or VMEM_LIMIT_BYTES,
  )


def dq_call(G, Lr, Lk, D, dtype, *, static: common.Static, vmem_limit_bytes=None):
  """The dQ `pallas_call`: grid `(G, Nq)`, K/V/key mask in HBM, streamed.

  Lr is the query side's rows, `Lq * group` (the group stacked, `layouts`).
  """
  del Lk
  bs, group = static.block_size, static.group
  R = group * bs
  blk = lambda d: pl.BlockSpec((None, R, d), lambda g, i: (g, i, 0))
  rows = common.row_block_spec(bs, group)
  hbm = pl.BlockSpec(memory_space=pl.ANY)
  kernel = functools.partial(_dq_kernel, static=static, precision=common.precision_for(dtype))
  return pl.pallas_call(
    kernel,
    out_shape=jax.ShapeDtypeStruct((G, Lr, D), dtype),
    grid=(G, Lr // R),
    in_specs=[hbm, hbm, blk(D), hbm, hbm, hbm, blk(D), rows, rows],
    out_specs=blk(D),
    scratch_shapes=[
      *common.index_scratch_shapes(static.index_chunk, static.causal),
      pltpu.VMEM((2, bs, D), dtype),
      pltpu.VMEM((2, bs, D), dtype),
      pltpu.VMEM((2, 1, bs), jnp.float32),
      pltpu.SemaphoreType.DMA((3, 2)),
    ],
    interpret=static.interpret,
    compiler_params=_compiler_params(vmem_limit_bytes),
    name="mra_block_sparse_dq",
  )


def dkv_call(G, Lr, Lk, D, dtype, *, static: common.Static, vmem_limit_bytes=None):
  """The dK/dV `pallas_call`: grid `(G, Nk)`, Q/dO/lse/delta in HBM, streamed."""
  del Lr
  bs, num_heads = static.block_size, static.num_heads
  blk = lambda d: pl.BlockSpec((None, bs, d), lambda g, i: (g, i, 0))
  hbm = pl.BlockSpec(memory_space=pl.ANY)
  # lax.div, not `//`: g >= 0, and floor division lowers through `sign`, which Mosaic only
  # lowers on a known TPU generation.
  kmask_blk = pl.BlockSpec((None, None, 1, bs), lambda g, i: (jax.lax.div(g, num_heads), i, 0, 0))
  kernel = functools.partial(_dkv_kernel, static=static, precision=common.precision_for(dtype))
  return pl.pallas_call(
    kernel,
    out_shape=(
      jax.ShapeDtypeStruct((G, Lk, D), dtype),
      jax.ShapeDtypeStruct((G, Lk, D), dtype),
    ),
    grid=(G, Lk // bs),
    in_specs=[hbm, hbm, blk(D), blk(D), kmask_blk, hbm, hbm, hbm, hbm],
    out_specs=(blk(D), blk(D)),
    scratch_shapes=[
      *common.index_scratch_shapes(static.index_chunk, static.causal),
      pltpu.VMEM((2, bs, D), dtype),
      pltpu.VMEM((2, bs, D), dtype),
      pltpu.VMEM((2, 1, bs), jnp.float32),
      pltpu.VMEM((2, 1, bs), jnp.float32),
      pltpu.SemaphoreType.DMA((4, 2)),
    ],
    interpret=static.interpret,
    compiler_params=_compiler_params(vmem_limit_bytes),
    name="mra_block_sparse_dkv",
  )


def attention_bwd(static: common.Static, residuals, cotangents):
  """The custom-VJP backward of `pallas_mosaic_tpu._attention` (G = B * Hk layouts).

  Per-query vectors (m0, lse, their cotangents, delta) are `(G, Nq, group, bs)` rows.
  """
  q, k, v, views, kmask_tiles, m0, out, lse = residuals
  dout, dlse = cotangents
  G, Lr, D = q.shape
  Lk = k.shape[1]
  bs = static.block_size
  delta = jnp.sum(dout * out, axis=-1).reshape(lse.shape) - dlse
  do = dout.astype(q.dtype)
  shape_args = (G, Lr, Lk, D, q.dtype)
  chunk = static.index_chunk

  dq = common.call(
    static,
    lambda st: dq_call(*shape_args, static=st),
    (
      common.offsets_by_program(views.row_ptr_GxNq1, views.row_split_GxNq),
      common.chunked_indices(views.cols_by_row_GxK, chunk),
      q,
      k,
      v,
      kmask_tiles,
      do,
      lse,
      delta,
    ),
  )
  members = index_views.per_group_member(views, static.group)
  # One (1, bs) row per virtual query block (query head of a block).
  as_member_rows = lambda x: x.reshape(G, Lr // bs, 1, bs)
  dk, dv = common.call(
    static,
    lambda st: dkv_call(*shape_args, static=st),
    (
      common.offsets_by_program(members.col_ptr_GxNk1, members.col_split_GxNk),
      common.chunked_indices(members.rows_by_col_GxK, chunk),
      k,
      v,
      kmask_tiles,
      q,
      do,
      as_member_rows(lse),
      as_member_rows(delta),
    ),
  )
  # d out / d acc0 = exp(m0 - m) / (l + eps) = exp(m0 - lse); d lse / d l0 likewise.
  init_weight = jnp.exp(m0 - lse)
  dacc0 = dout * init_weight.reshape(G, Lr, 1)
  return dq, dk, dv, None, None, None, -delta * init_weight, dacc0
