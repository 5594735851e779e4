"""Block-sparse attention as Pallas kernels lowered through Triton (GPU): forward and op.

Layouts (G = batch * heads, one program per (head, query block), grid `(G, Nq)`, or per
half or quarter block where `Static.rows_per_program` says so): the program's query rows
`(bs, D)`, the whole head's K/V `(Lk, D)` in global memory, from which
the row's key blocks are sliced with `pl.ds`, the key mask as rows `(Nk, bs)`, per-query
vectors as columns `(bs, 1)`. The Triton lowering has no scalar prefetch, so the tile
views' index rows are ordinary inputs, one row per program (block `(None, n)`).

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
  row_ptr_ref,
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
  block_size: int,
  scale: float,
  eps: float,
  precision,
):
  """Online softmax over one query block's selected key blocks, from (m0, l0, acc0)."""
  bs = block_size
  # A program may hold a slice of its query block (`rows_per_program`); r is the block.
  r = jax.lax.div(pl.program_id(1), block_size // q_ref.shape[0])
  start, stop = row_ptr_ref[r], row_ptr_ref[r + 1]
  q_BsxD = q_ref[...]
  m0_Bsx1 = m0_ref[...]
  # An empty initial state (m0 = -inf) starts at the finite mask value: its l0/acc0 weigh 0.
  m_Bsx1 = jnp.maximum(m0_Bsx1, base.MASK_VALUE)
  init_scale_Bsx1 = jnp.exp(m0_Bsx1 - m_Bsx1)
  l_Bsx1 = l0_ref[...] * init_scale_Bsx1
  acc_BsxD = acc0_ref[...] * init_scale_Bsx1

  def body(t, carry):
    m_Bsx1, l_Bsx1, acc_BsxD = carry
    c = cols_ref[t]
    k_BsxD = k_ref[pl.ds(pl.multiple_of(c * bs, bs), bs), :]
    v_BsxD = v_ref[pl.ds(pl.multiple_of(c * bs, bs), bs), :]
    valid_1xBs = kmask_ref[pl.ds(c, 1), :] > 0.5
    s_BsxBs = jnp.where(valid_1xBs, dot_nt(q_BsxD, k_BsxD, precision) * scale, base.MASK_VALUE)
    m_new_Bsx1 = jnp.maximum(m_Bsx1, jnp.max(s_BsxBs, axis=1, keepdims=True))
    alpha_Bsx1 = jnp.exp(m_Bsx1 - m_new_Bsx1)
    # Zeroed explicitly: while every key so far is masked, s - m_new is 0, not -inf.
    p_BsxBs = jnp.where(valid_1xBs, jnp.exp(s_BsxBs - m_new_Bsx1), 0.0)
    l_Bsx1 = alpha_Bsx1 * l_Bsx1 + jnp.sum(p_BsxBs, axis=1, keepdims=True)
    acc_BsxD = alpha_Bsx1 * acc_BsxD + dot_nn(p_BsxBs.astype(v_BsxD.dtype), v_BsxD, precision)
    return m_new_Bsx1, l_Bsx1, acc_BsxD

  m_Bsx1, l_Bsx1, acc_BsxD = jax.lax.fori_loop(start, stop, body, (m_Bsx1, l_Bsx1, acc_BsxD))
  # No valid key and no initial state: l = acc = 0, and the reference's maximum is 0.
  m_Bsx1 = jnp.where(m_Bsx1 > 0.5 * base.MASK_VALUE, m_Bsx1, 0.0)
  out_ref[...] = (acc_BsxD / (l_Bsx1 + eps)).astype(out_ref.dtype)
  lse_ref[...] = m_Bsx1 + jnp.log(l_Bsx1 + eps)


def _forward(q, k, v, views, kmask_rows, m0, l0, acc0, static: common.Static):
  """Launches the forward kernel on the `(G, L, D)` layouts; returns `(out, lse)` float32."""
  operands = (views.row_ptr_GxNq1, views.cols_by_row_GxK, q, k, v, kmask_rows, m0, l0, acc0)
  build = functools.partial(_forward_call, q.shape, k.shape[1], views.cols_by_row_GxK.shape[1])
  return common.launch(static, build, operands)


def _forward_call(q_shape, Lk: int, K: int, static: common.Static):
  """The forward `pallas_call` (operands as `_forward` passes them; `static.interpret` set)."""
  G, Lq, D = q_shape
  bs, Nq, Nk = static.block_size, Lq // static.block_size, Lk // static.block_size
  rows = static.rows_per_program(D, "fwd")
  row = lambda n: pl.BlockSpec((None, n), lambda g, i: (g, 0))
  row_blk = lambda d: pl.BlockSpec((None, rows, d), lambda g, i: (g, i, 0))
  head_blk = pl.BlockSpec((None, Lk, D), lambda g, i: (g, 0, 0))
  # lax.div, not `//`: g >= 0, and floor division lowers through `sign`.
  kmask_blk = pl.BlockSpec((None, Nk, bs), lambda g, i: (jax.lax.div(g, static.num_heads), 0, 0))
  kernel = functools.partial(
    _forward_kernel, block_size=bs, scale=static.scale, eps=static.eps, precision=static.dots
  )
  return pl.pallas_call(
    kernel,
    out_shape=(
      jax.ShapeDtypeStruct((G, Lq, D), jnp.float32),
      jax.ShapeDtypeStruct((G, Lq, 1), jnp.float32),
    ),
    grid=(G, Lq // rows),
    in_specs=[
      row(Nq + 1),
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
  """The op on the kernel layouts (leading axis G = B * H); see `_attention_fwd`."""
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
    k_BxHxLkxD,
    v_BxHxLkxD,
    tile_ids_BxHxK,
    key_valid_BxLk,
    m0_BxHxLq,
    l0_BxHxLq,
    acc0_BxHxLqxD,
    *,
    block_size: int,
    scale: float,
    eps: float,
  ) -> tuple[jax.Array, jax.Array]:
    B, H, Lq, D = q_BxHxLqxD.shape
    Lk = k_BxHxLkxD.shape[2]
    G, Nq, Nk = B * H, Lq // block_size, Lk // block_size
    static = common.Static(
      num_heads=H,
      block_size=block_size,
      scale=float(scale),
      eps=float(eps),
      precision=pallas_triton_dots.resolve_precision(self.precision, q_BxHxLqxD.dtype),
      interpret=self.interpret,
    )
    Dp = max(16, 1 << (D - 1).bit_length())
    pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, Dp - D))) if Dp != D else x
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    views = index_views.build_tile_views(
      tile_ids_BxHxK.reshape(G, -1), num_q_blocks=Nq, num_k_blocks=Nk
    )
    valid = jax.lax.stop_gradient(key_valid_BxLk.astype(jnp.float32))
    out_GxLqxDp, lse_GxLqx1 = _attention(
      pad(q_BxHxLqxD.reshape(G, Lq, D)),
      pad(k_BxHxLkxD.reshape(G, Lk, D)),
      pad(v_BxHxLkxD.reshape(G, Lk, D)),
      views,
      valid.reshape(B, Nk, block_size),
      valid.reshape(B, Lk, 1),
      jax.lax.stop_gradient(f32(m0_BxHxLq)).reshape(G, Lq, 1),
      f32(l0_BxHxLq).reshape(G, Lq, 1),
      pad(f32(acc0_BxHxLqxD).reshape(G, Lq, D)),
      static,
    )
    return out_GxLqxDp[:, :, :D].reshape(B, H, Lq, D), lse_GxLqx1.reshape(B, H, Lq)
