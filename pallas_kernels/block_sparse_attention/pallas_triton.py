"""Block-sparse attention as Pallas kernels lowered through Triton (GPU): forward and op.

Layouts (G = batch * kv heads; with grouped-query attention a kv head's query heads are
stacked block by block, `layouts`): one program per `rows_per_program` query rows of a
head, grid `(G, Lq * group / rows)`, which is one program per query block, per half or
quarter block where float32 registers ask for it, or per several query heads' blocks of
a group (each selected K/V tile is then loaded once for all of them). A program holds its
query rows `(rows, D)`; the whole kv head's K/V `(Lk, D)` stay in global memory, from which
the row's key blocks are sliced with `pl.ds`; the key mask travels as rows `(Nk, bs)`,
per-query vectors as columns `(rows, 1)`. The Triton lowering has no scalar prefetch, so
the tile views' index rows are ordinary inputs, one row per program (block `(None, n)`);
a causal op's offsets carry where each row meets the diagonal after the CSR offsets.

`compiler_params` is always given explicitly, because since jax 0.9 a bare `pallas_call` on
GPU means Mosaic GPU. Triton loads only power-of-two sizes and its dot needs every dim >= 16,
so the head dim is zero-padded up to such a size (zeros change no dot product). Every matmul
is `A @ B` or `A @ B^T`, 2-D, accumulated in float32, float32 operands at the chosen
precision (`pallas_triton_dots`). The backward kernels live in `pallas_triton_vjp`, the
launch settings in `pallas_triton_common`.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import jax_compat
from pallas_kernels.block_sparse_attention import (
  base,
  index_views,
  layouts,
  pallas_triton_dots,
  pallas_triton_vjp,
)
from pallas_kernels.block_sparse_attention import pallas_triton_common as common

jax_compat.ignore_triton_deprecation()  # jax >= 0.11 deprecates this lowering: see jax_compat

BLOCK_SIZES = (32, 64)
F32_PRECISIONS = pallas_triton_dots.F32_PRECISIONS
DEFAULT_F32_PRECISION = pallas_triton_dots.DEFAULT_F32_PRECISION
dot_nt, dot_nn = pallas_triton_dots.dot_nt, pallas_triton_dots.dot_nn


def _forward_kernel(
  offsets_ref,
  cols_ref,
  q_ref,
  k_ref,
  v_ref,
  kmask_ref,
  m0_ref,
  l0_ref,
  acc0_ref,
  out_ref,
  lse_ref,
  *,
  static: common.Static,
):
  """Online softmax over one query block's selected key blocks, from (m0, l0, acc0).

  The program's R rows are query rows of the group-stacked layout (`layouts`): a slice of
  one query head's block, a block, or the blocks of several query heads of the group, which
  then share each K/V tile load. Causal: the row's tiles from `row_split` on (c >= r: the
  diagonal tile) run a second loop that masks by position; the others pay nothing.
  """
  bs, precision, scale, eps = static.block_size, static.dots, static.scale, static.eps
  R = q_ref.shape[0]
  first = pl.program_id(1) * R  # the program's first stacked row
  r = jax.lax.div(first, static.group * bs)  # its query block
  start, stop = offsets_ref[r], offsets_ref[r + 1]
  q_RxD = q_ref[...]
  m0_Rx1 = m0_ref[...]
  # An empty initial state (m0 = -inf) starts at the finite mask value: its l0/acc0 weigh 0.
  m_Rx1 = jnp.maximum(m0_Rx1, base.MASK_VALUE)
  init_scale_Rx1 = jnp.exp(m0_Rx1 - m_Rx1)
  l_Rx1 = l0_ref[...] * init_scale_Rx1
  acc_RxD = acc0_ref[...] * init_scale_Rx1

  def body(t, carry, masked):
    m_Rx1, l_Rx1, acc_RxD = carry
    c = cols_ref[t]
    k_BsxD = k_ref[pl.ds(pl.multiple_of(c * bs, bs), bs), :]
    v_BsxD = v_ref[pl.ds(pl.multiple_of(c * bs, bs), bs), :]
    keep_RxBs = kmask_ref[pl.ds(c, 1), :] > 0.5
    if masked:
      keep_RxBs = keep_RxBs & common.causal_keep(first, R, r, c, bs, rows_are_queries=True)
    s_RxBs = jnp.where(keep_RxBs, dot_nt(q_RxD, k_BsxD, precision) * scale, base.MASK_VALUE)
    m_new_Rx1 = jnp.maximum(m_Rx1, jnp.max(s_RxBs, axis=1, keepdims=True))
    alpha_Rx1 = jnp.exp(m_Rx1 - m_new_Rx1)
    # Zeroed explicitly: while every key so far is masked, s - m_new is 0, not -inf.
    p_RxBs = jnp.where(keep_RxBs, jnp.exp(s_RxBs - m_new_Rx1), 0.0)
    l_Rx1 = alpha_Rx1 * l_Rx1 + jnp.sum(p_RxBs, axis=1, keepdims=True)
    acc_RxD = alpha_Rx1 * acc_RxD + dot_nn(p_RxBs.astype(v_BsxD.dtype), v_BsxD, precision)
    return m_new_Rx1, l_Rx1, acc_RxD

  split = offsets_ref[static.num_q_blocks + 1 + r] if static.causal else None
  m_Rx1, l_Rx1, acc_RxD = common.loop_tiles(
    start, stop, split, body, (m_Rx1, l_Rx1, acc_RxD), masked_first=False
  )
  # No valid key and no initial state: l = acc = 0, and the reference's maximum is 0.
  m_Rx1 = jnp.where(m_Rx1 > 0.5 * base.MASK_VALUE, m_Rx1, 0.0)
  out_ref[...] = (acc_RxD / (l_Rx1 + eps)).astype(out_ref.dtype)
  lse_ref[...] = m_Rx1 + jnp.log(l_Rx1 + eps)


def _forward(q, k, v, views, kmask_rows, m0, l0, acc0, static: common.Static):
  """Launches the forward kernel on the `(G, L, D)` layouts; returns `(out, lse)` float32."""
  offsets = common.row_offsets(views, static)
  operands = (offsets, views.cols_by_row_GxK, q, k, v, kmask_rows, m0, l0, acc0)
  build = functools.partial(_forward_call, q.shape, k.shape[1], views.cols_by_row_GxK.shape[1])
  return common.launch(static, build, operands)


def _forward_call(q_shape, Lk: int, K: int, static: common.Static):
  """The forward `pallas_call` (operands as `_forward` passes them; `static.interpret` set).

  q_shape is `(G, Lq * group, D)`: G = B * Hk, the group's query rows stacked (`layouts`).
  """
  G, Lr, D = q_shape
  bs, Nk = static.block_size, Lk // static.block_size
  rows = static.rows_per_program(D, "fwd")
  row = lambda n: pl.BlockSpec((None, n), lambda g, i: (g, 0))
  row_blk = lambda d: pl.BlockSpec((None, rows, d), lambda g, i: (g, i, 0))
  head_blk = pl.BlockSpec((None, Lk, D), lambda g, i: (g, 0, 0))
  # lax.div, not `//`: g >= 0, and floor division lowers through `sign`.
  kmask_blk = pl.BlockSpec((None, Nk, bs), lambda g, i: (jax.lax.div(g, static.num_heads), 0, 0))
  return pl.pallas_call(
    functools.partial(_forward_kernel, static=static),
    out_shape=(
      jax.ShapeDtypeStruct((G, Lr, D), jnp.float32),
      jax.ShapeDtypeStruct((G, Lr, 1), jnp.float32),
    ),
    grid=(G, Lr // rows),
    in_specs=[
      row(static.offsets_length("row")),
      row(K),
      row_blk(D),
      head_blk,
      head_blk,
      kmask_blk,
      row_blk(1),
      row_blk(1),
      row_blk(D),
    ],
    out_specs=(row_blk(D), row_blk(1)),
    # out overwrites acc0 (operand 8) in place: each program reads its rows of acc0 before
    # it writes the same rows of out, and the VJP does not keep acc0. One float32
    # B x H x Lq x D array less.
    input_output_aliases={8: 0},
    interpret=static.interpret,
    compiler_params=static.launch_params(D, "fwd"),
    name="mra_block_sparse_fwd",
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(9,))
def _attention(q, k, v, views, kmask_rows, kmask_col, m0, l0, acc0, static):
  """The op on the kernel layouts (leading axis G = B * Hk); see `_attention_fwd`."""
  del kmask_col  # only the backward pass reads the column layout
  return _forward(q, k, v, views, kmask_rows, m0, l0, acc0, static)


def _attention_fwd(q, k, v, views, kmask_rows, kmask_col, m0, l0, acc0, static):
  out, lse = _forward(q, k, v, views, kmask_rows, m0, l0, acc0, static)
  return (out, lse), (q, k, v, views, kmask_rows, kmask_col, m0, out, lse)


_attention.defvjp(_attention_fwd, pallas_triton_vjp.attention_bwd)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PallasTriton(base.Implementation):
  """Block-sparse attention from an initial softmax state, as Pallas Triton kernels (GPU).

  Block sizes `BLOCK_SIZES`; any head dim (zero-padded to a power of two >= 16).
  Differentiable (custom VJP) in q, k, v, l0 and acc0.

  Attributes:
    precision: float32 inputs' dot precision, one of `F32_PRECISIONS` ("bf16x3", "float32",
      "tf32x3", "tf32", "bf16"; see `pallas_triton_dots`); None means
      `DEFAULT_F32_PRECISION` ("bf16x3"). bfloat16 / float16 inputs always use their native
      dot and ignore it. Interpret mode emulates each choice's rounding.
    interpret: None (the compiled kernels where the program is lowered for a GPU, interpret
      mode elsewhere, decided at lowering) or a bool.
  """

  NAME: ClassVar[str] = "pallas_triton"
  BLOCK_SIZES: ClassVar[tuple[int, ...]] = BLOCK_SIZES
  TAKES_PRECISION: ClassVar[bool] = True
  ON_AUTO_AXES: ClassVar[str] = "custom_partitioning"
  precision: str | None = None
  interpret: bool | None = None

  def __post_init__(self):
    pallas_triton_dots.check_precision(self.precision)
    if self.interpret is not None and not isinstance(self.interpret, bool):
      raise ValueError(
        f"interpret must be None or a bool for pallas_triton, got interpret={self.interpret!r}"
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
    G, Nq, Nk = B * Hk, Lq // block_size, Lk // block_size
    static = common.Static(
      num_heads=Hk,
      block_size=block_size,
      scale=float(scale),
      eps=float(eps),
      precision=pallas_triton_dots.resolve_precision(self.precision, q_BxHxLqxD.dtype),
      interpret=self.interpret,
      group=H // Hk,
      causal=causal,
      num_q_blocks=Nq,
      num_k_blocks=Nk,
    )
    Dp = max(16, 1 << (D - 1).bit_length())
    pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, Dp - D))) if Dp != D else x
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    # (G, Lq * group, ...): a kv head's group of query heads stacked block by block.
    rows = lambda x: layouts.group_rows(x, kv_heads=Hk, block_size=block_size).reshape(
      G, Lq * static.group, *x.shape[3:]
    )
    views = index_views.build_tile_views(
      tile_ids_BxHkxK.reshape(G, -1), num_q_blocks=Nq, num_k_blocks=Nk, causal=causal
    )
    valid = jax.lax.stop_gradient(key_valid_BxLk.astype(jnp.float32))
    out_GxLrxDp, lse_GxLrx1 = _attention(
      pad(rows(q_BxHxLqxD)),
      pad(k_BxHkxLkxD.reshape(G, Lk, D)),
      pad(v_BxHkxLkxD.reshape(G, Lk, D)),
      views,
      valid.reshape(B, Nk, block_size),
      valid.reshape(B, Lk, 1),
      rows(jax.lax.stop_gradient(f32(m0_BxHxLq)))[..., None],
      rows(f32(l0_BxHxLq))[..., None],
      pad(rows(f32(acc0_BxHxLqxD))),
      static,
    )
    per_head = lambda x: layouts.ungroup_rows(
      x.reshape(B, Hk, *x.shape[1:]), heads=H, block_size=block_size
    )
    return per_head(out_GxLrxDp[:, :, :D]), per_head(lse_GxLrx1[:, :, 0])
