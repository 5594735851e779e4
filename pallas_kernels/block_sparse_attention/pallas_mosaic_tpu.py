"""Block-sparse attention as Pallas kernels lowered through Mosaic (TPU): forward and op.

Layouts (G = batch * kv heads, one program per (kv head, query block), grid `(G, Nq)`): the
program's query block `(R, D)`, R = group * bs (grouped-query attention stacks the kv head's
query heads on the row axis, `layouts`, so one K/V tile copy serves the whole group), and its
initial state through the BlockSpec pipeline; K, V and the key mask stay in HBM and only the
row's selected tiles are copied in, one at a time, double-buffered
(`pallas_mosaic_tpu_common.stream_tiles`), with the row's tile list read from HBM in fixed
SMEM chunks. VMEM and SMEM use are fixed by the block size, the group and D
(`pallas_mosaic_tpu_common.vmem_bytes`): no B, H, L or tile count in them. Per-query vectors
(m0, l0, lse) and the key mask travel as `(1, bs)` rows, `(group, bs)` for a group:
`(bs, 1)` columns pad to 128 lanes in HBM, 128 times their size. Causal: a row's tiles that
reach the diagonal run in a loop of their own, the only one that masks by position.

Every grid step writes its own output block exactly once, so both grid axes are "parallel".
Every matmul is `A @ B` or `A @ B^T`, 2-D, accumulated in float32. The backward kernels live
in `pallas_mosaic_tpu_vjp`.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.block_sparse_attention import (
  base,
  index_views,
  layouts,
  pallas_mosaic_tpu_vjp,
)
from pallas_kernels.block_sparse_attention import pallas_mosaic_tpu_common as common

BLOCK_SIZES = (32, 64, 128)
# None: Mosaic's default scoped-VMEM limit, which the streamed kernels fit at any length
# (`common.vmem_bytes`).
VMEM_LIMIT_BYTES = None


def _forward_kernel(
  offsets_hbm,
  cols_hbm,
  q_ref,
  k_hbm,
  v_hbm,
  kmask_hbm,
  m0_ref,
  l0_ref,
  acc0_ref,
  out_ref,
  lse_ref,
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
  """Online softmax over one query block's selected key blocks, from (m0, l0, acc0).

  The program's R = group * bs rows are its kv head's group of query heads, stacked
  (`layouts`): each K/V tile copy serves all of them. Causal: the tiles from the split on
  (c >= r: the diagonal tile) run their own loop, the only one that masks by position.
  """
  bs, scale, eps = static.block_size, static.scale, static.eps
  R = q_ref.shape[0]
  # Program ids at the top level: the HLO interpreter does not rewrite them in loop bodies.
  g, r = pl.program_id(0), pl.program_id(1)
  b = jax.lax.div(g, static.num_heads)
  offsets = common.read_offsets(offsets_hbm, g, r, offsets_smem, index_sem)
  q_RxD = q_ref[...]
  m0_Rx1 = common.rows_to_column(m0_ref)
  # An empty initial state (m0 = -inf) starts at the finite mask value: its l0/acc0 weigh 0.
  m_Rx1 = jnp.maximum(m0_Rx1, base.MASK_VALUE)
  init_scale_Rx1 = jnp.exp(m0_Rx1 - m_Rx1)
  l_Rx1 = common.rows_to_column(l0_ref) * init_scale_Rx1
  acc_RxD = acc0_ref[...] * init_scale_Rx1

  def tile_copies(c, slot):
    rows = pl.ds(pl.multiple_of(c * bs, bs), bs)
    return [
      pltpu.make_async_copy(k_hbm.at[g, rows], k_buf.at[slot], tile_sems.at[0, slot]),
      pltpu.make_async_copy(v_hbm.at[g, rows], v_buf.at[slot], tile_sems.at[1, slot]),
      pltpu.make_async_copy(kmask_hbm.at[b, c], kmask_buf.at[slot], tile_sems.at[2, slot]),
    ]

  def compute(slot, carry, c=None):
    """One tile; `c` (its key block) given: one that reaches the diagonal, masked."""
    m_Rx1, l_Rx1, acc_RxD = carry
    k_BsxD, v_BsxD = k_buf[slot], v_buf[slot]
    keep_RxBs = kmask_buf[slot] > 0.5
    if c is not None:
      keep_RxBs = keep_RxBs & common.causal_keep(R, r, c, bs, rows_are_queries=True)
    s_RxBs = jnp.where(keep_RxBs, common.dot_nt(q_RxD, k_BsxD, precision) * scale, base.MASK_VALUE)
    m_new_Rx1 = jnp.maximum(m_Rx1, jnp.max(s_RxBs, axis=1, keepdims=True))
    alpha_Rx1 = jnp.exp(m_Rx1 - m_new_Rx1)
    # Zeroed explicitly: while every key so far is masked, s - m_new is 0, not -inf.
    p_RxBs = jnp.where(keep_RxBs, jnp.exp(s_RxBs - m_new_Rx1), 0.0)
    l_Rx1 = alpha_Rx1 * l_Rx1 + jnp.sum(p_RxBs, axis=1, keepdims=True)
    acc_RxD = alpha_Rx1 * acc_RxD + common.dot_nn(p_RxBs.astype(v_BsxD.dtype), v_BsxD, precision)
    return m_new_Rx1, l_Rx1, acc_RxD

  m_Rx1, l_Rx1, acc_RxD = common.stream_tiles(
    g,
    offsets[0],
    offsets[-1],
    cols_hbm,
    cols_smem,
    index_sem,
    tile_copies,
    compute,
    (m_Rx1, l_Rx1, acc_RxD),
    # Causal: the row's tiles from the split on (c >= r) are masked.
    split=offsets[1] if static.causal else None,
    masked_compute=compute,
  )
  # No valid key and no initial state: l = acc = 0, and the reference's maximum is 0.
  m_Rx1 = jnp.where(m_Rx1 > 0.5 * base.MASK_VALUE, m_Rx1, 0.0)
  out_ref[...] = (acc_RxD / (l_Rx1 + eps)).astype(out_ref.dtype)
  common.store_column_as_rows(lse_ref, m_Rx1 + jnp.log(l_Rx1 + eps))


# acc0's position among the forward call's operands (`_forward`).
_ACC0_OPERAND = 8


def forward_call(G, Lr, Lk, D, dtype, *, static: common.Static, vmem_limit_bytes=None):
  """The forward `pallas_call` on the `(G, L, D)` layouts (see `_forward` for operands).

  Lr is the query side's rows, `Lq * group` (the group stacked, `layouts`).
  `static.interpret` must be resolved (not None): `common.call` does that.
  """
  bs, group = static.block_size, static.group
  R, Nq = group * bs, Lr // (group * bs)
  del Lk
  row_blk = lambda d: pl.BlockSpec((None, R, d), lambda g, i: (g, i, 0))
  rows = common.row_block_spec(bs, group)
  hbm = pl.BlockSpec(memory_space=pl.ANY)
  kernel = functools.partial(_forward_kernel, static=static, precision=common.precision_for(dtype))
  return pl.pallas_call(
    kernel,
    out_shape=(
      jax.ShapeDtypeStruct((G, Lr, D), jnp.float32),
      jax.ShapeDtypeStruct((G, Nq, group, bs), jnp.float32),
    ),
    grid=(G, Nq),
    in_specs=[hbm, hbm, row_blk(D), hbm, hbm, hbm, rows, rows, row_blk(D)],
    out_specs=(row_blk(D), rows),
    scratch_shapes=[
      *common.index_scratch_shapes(static.index_chunk, static.causal),
      pltpu.VMEM((2, bs, D), dtype),
      pltpu.VMEM((2, bs, D), dtype),
      pltpu.VMEM((2, 1, bs), jnp.float32),
      pltpu.SemaphoreType.DMA((3, 2)),
    ],
    # out overwrites acc0 in place: each program reads its query block's acc0 before it
    # writes that block's out, and nothing reads acc0 afterwards (the VJP does not keep
    # it). One float32 B x H x Lq x D array less: 3 GiB at B=8, H=12, L=65536, D=64.
    input_output_aliases={_ACC0_OPERAND: 0},
    interpret=static.interpret,
    compiler_params=pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel"),
      vmem_limit_bytes=vmem_limit_bytes or VMEM_LIMIT_BYTES,
    ),
    name="mra_block_sparse_fwd",
  )


def _forward(q, k, v, views, kmask_tiles, m0, l0, acc0, static: common.Static):
  """Launches the forward kernel on the `(G, L, D)` layouts; returns `(out, lse)` float32."""
  G, Lr, D = q.shape
  build = lambda st: forward_call(G, Lr, k.shape[1], D, q.dtype, static=st)
  operands = (
    common.offsets_by_program(views.row_ptr_GxNq1, views.row_split_GxNq),
    common.chunked_indices(views.cols_by_row_GxK, static.index_chunk),
    q,
    k,
    v,
    kmask_tiles,
    m0,
    l0,
    acc0,
  )
  return common.call(static, build, operands)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _attention(q, k, v, views, kmask_tiles, m0, l0, acc0, static):
  """The op on the kernel layouts (leading axis G = B * Hk); see `_attention_fwd`."""
  return _forward(q, k, v, views, kmask_tiles, m0, l0, acc0, static)


def _attention_fwd(q, k, v, views, kmask_tiles, m0, l0, acc0, static):
  out, lse = _forward(q, k, v, views, kmask_tiles, m0, l0, acc0, static)
  return (out, lse), (q, k, v, views, kmask_tiles, m0, out, lse)


_attention.defvjp(_attention_fwd, pallas_mosaic_tpu_vjp.attention_bwd)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PallasMosaicTpu(base.Implementation):
  """Block-sparse attention from an initial softmax state, as Pallas Mosaic TPU kernels.

  Block sizes `BLOCK_SIZES`. Differentiable (custom VJP) in q, k, v, l0 and acc0.

  Attributes:
    index_chunk: tile indices a program holds in SMEM at once (its tile list is read from
      HBM in chunks of this size): 128 (512 bytes) by default; smaller values are for tests
      of rows that cross chunks.
    interpret: None (the compiled kernels where the program is lowered for TPU, interpret
      mode elsewhere, decided at lowering), a bool, or a `pltpu.InterpretParams` (TPU
      interpret mode: simulated memories, DMAs and output-revisit checks).
  """

  NAME: ClassVar[str] = "pallas_mosaic_tpu"
  BLOCK_SIZES: ClassVar[tuple[int, ...]] = BLOCK_SIZES
  ON_AUTO_AXES: ClassVar[str] = "shard_map"
  index_chunk: int = common.INDEX_CHUNK
  interpret: bool | pltpu.InterpretParams | None = None

  def __post_init__(self):
    base.check_int_option("index_chunk", self.index_chunk, minimum=1)
    if self.interpret is not None and not isinstance(self.interpret, (bool, pltpu.InterpretParams)):
      raise ValueError(
        f"interpret must be None, a bool or a pltpu.InterpretParams for pallas_mosaic_tpu, got "
        f"interpret={self.interpret!r}"
      )

  def __call__(
    self,
    q_BxHxLqxD,
    k_BxHkxLkxD,
    v_BxHkxLkxD,
    tile_ids_BxHkxK,
    key_valid_BxLk,
    m0_BxHxLq,
    l0_BxHxLq,
    acc0_BxHxLqxD,
    *,
    block_size: int,
    scale: float,
    eps: float,
    causal: bool,
  ) -> tuple[jax.Array, jax.Array]:
    B, H, Lq, D = q_BxHxLqxD.shape
    Hk, Lk = k_BxHkxLkxD.shape[1], k_BxHkxLkxD.shape[2]
    G, Nq, Nk, group = B * Hk, Lq // block_size, Lk // block_size, H // Hk
    static = common.Static(
      num_heads=Hk,
      block_size=block_size,
      scale=float(scale),
      eps=float(eps),
      index_chunk=self.index_chunk,
      interpret=self.interpret,
      group=group,
      causal=causal,
    )
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    # (G, Lq * group, ...): a kv head's group of query heads stacked block by block.
    stacked = lambda x: layouts.group_rows(x, kv_heads=Hk, block_size=block_size).reshape(
      G, Lq * group, *x.shape[3:]
    )
    views = index_views.build_tile_views(
      tile_ids_BxHkxK.reshape(G, -1), num_q_blocks=Nq, num_k_blocks=Nk, causal=causal
    )
    valid = jax.lax.stop_gradient(key_valid_BxLk.astype(jnp.float32))
    # Per-query vectors as the (group, bs) rows of each query block (`common.rows_to_column`).
    as_rows = lambda x_BxHxLq: stacked(x_BxHxLq).reshape(G, Nq, group, block_size)
    out_GxLrxD, lse_GxNqxGrxBs = _attention(
      stacked(q_BxHxLqxD),
      k_BxHkxLkxD.reshape(G, Lk, D),
      v_BxHkxLkxD.reshape(G, Lk, D),
      views,
      valid.reshape(B, Nk, 1, block_size),
      as_rows(jax.lax.stop_gradient(f32(m0_BxHxLq))),
      as_rows(f32(l0_BxHxLq)),
      stacked(f32(acc0_BxHxLqxD)),
      static,
    )
    per_head = lambda x: layouts.ungroup_rows(
      x.reshape(B, Hk, Lq * group, *x.shape[2:]), heads=H, block_size=block_size
    )
    return per_head(out_GxLrxD), per_head(lse_GxNqxGrxBs.reshape(G, Lq * group))
