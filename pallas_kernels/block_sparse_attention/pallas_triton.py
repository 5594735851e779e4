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
precision (`pallas_triton_dots`). The backward kernels live in `pallas_triton_vjp`.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels import jax_compat
from pallas_kernels.block_sparse_attention import (
  base,
  index_views,
  pallas_triton_dots,
  pallas_triton_vjp,
)

jax_compat.ignore_triton_deprecation()  # jax >= 0.11 deprecates this lowering: see jax_compat

BLOCK_SIZES = (32, 64)
F32_PRECISIONS = pallas_triton_dots.F32_PRECISIONS
DEFAULT_F32_PRECISION = pallas_triton_dots.DEFAULT_F32_PRECISION
dot_nt, dot_nn = pallas_triton_dots.dot_nt, pallas_triton_dots.dot_nn
# The three kernels, by the names their launch settings are chosen for.
KERNELS = ("fwd", "dq", "dkv")
# Float32 dots whose operands take the most registers: IEEE "float32" spreads them over the
# threads for scalar FMAs, "tf32x3" holds three float32 copies of each (bf16x3's are bf16).
REGISTER_HUNGRY = ("float32", "tf32x3")


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


class Static(NamedTuple):
  """The op's static settings, shared by the forward and backward launches.

  Attributes:
    num_heads: H (programs of one batch element share its key mask).
    block_size: tile side, in `BLOCK_SIZES`.
    scale: logit scale.
    eps: added to the normaliser.
    interpret: run the kernels in interpret mode.
    precision: float32 dot precision, None for half-precision inputs.
  """

  num_heads: int
  block_size: int
  scale: float
  eps: float
  interpret: bool
  precision: pallas_triton_dots.DotPrecision | None

  def launch_params(self, head_dim: int, kernel: str) -> pltriton.CompilerParams:
    """The Triton launch settings of `kernel` (one of `KERNELS`) for a (padded) head dim."""
    rows = self.rows_per_program(head_dim, kernel)
    return compiler_params(rows, self.block_size, head_dim, self.precision)

  def rows_per_program(self, head_dim: int, kernel: str) -> int:
    """Query rows (forward, dQ) or key rows (dK/dV) of one `kernel` program.

    A program holds a block, half of one or a quarter of one; the programs that share a
    block read the same K/V (Q/dO) tiles. Chosen from ptxas' register and spill report for
    an H100 (`benchmarks.compile_report_gpu --precisions all`):

    * Float32 operands of a 64 x 128 tile spill at any warp count (their bf16x3 splits and
      accumulators exceed 255 registers per thread), as do IEEE float32 64-row tiles (the
      scalar-FMA dot spreads every operand over the threads): 32-row programs.
    * The register-hungry dots (`REGISTER_HUNGRY`) spill in every kernel at block 64 /
      D 128, and "tf32x3" in dK/dV past a 32 x 64 key tile: programs of 32 x 64 elements
      (16 rows at D 128, 32 at D 64).
    """
    if kernel not in KERNELS:
      raise ValueError(f"kernel must be one of {KERNELS}, got {kernel=}")
    if self.precision is None:
      return self.block_size
    rows = self.block_size
    if self.block_size > 32 and (head_dim > 64 or self.precision.name == "float32"):
      rows = 32
    name = self.precision.name
    if (name in REGISTER_HUNGRY and self.block_size * head_dim > 64 * 64) or (
      name == "tf32x3" and kernel == "dkv"
    ):
      # Triton's dot needs 16 rows or more (only D > 128 would ask for fewer).
      rows = min(rows, max(16, 32 * 64 // head_dim))
    return rows

  def dkv_two_passes(self, head_dim: int) -> bool:
    """Whether dK/dV walks each column twice, one float32 accumulator live at a time.

    Where blocks are split, and for the register-hungry dots (`REGISTER_HUNGRY`), the two
    accumulators beside the Q/dO tiles spill; one extra `K Q^T` per tile removes that.
    """
    if self.precision is None:
      return False
    split = self.rows_per_program(head_dim, "dkv") < self.block_size
    return split or self.precision.name in REGISTER_HUNGRY


def num_warps(block_size: int, head_dim: int, precision) -> int:
  """Warps per program of every kernel: `head_dim` already padded.

  Chosen from ptxas' register and spill report for an H100 (`benchmarks.compile_report_gpu`).
  Half-precision operands fit 4 warps. Float32 operands take twice the registers, and the
  bf16x3 / tf32x3 splits hold two more copies of each operand: past a 32 x 64 block (and
  for IEEE float32, whose scalar-FMA dot spreads operands over every thread) 8 warps keep
  them in registers, also in programs that hold part of a block (they load whole K/V or
  Q/dO tiles of the block).
  """
  if precision is None:
    return 4
  if block_size * head_dim > 32 * 64 or precision.name == "float32":
    return 8
  return 4


def compiler_params(
  rows: int, block_size: int, head_dim: int, precision
) -> pltriton.CompilerParams:
  """Triton launch settings of a program of `rows` rows of a block: see `num_warps`.

  Two pipeline stages let Triton prefetch the next tile's K/V (Q/dO) rows into shared
  memory while the current one is multiplied (jax's own Triton attention uses 2). Programs
  that hold half a 64-row block (`Static.rows_per_program`) use one stage: the prefetched
  64-row float32 tiles cost the registers that otherwise spill. Quarter-block (16-row)
  programs have the registers for two stages, and IEEE float32 there spills with one.
  """
  warps = num_warps(block_size, head_dim, precision)
  return pltriton.CompilerParams(
    num_warps=warps, num_stages=1 if (rows, block_size) == (32, 64) else 2
  )


def _forward(q, k, v, views, kmask_rows, m0, l0, acc0, static: Static):
  """Launches the forward kernel on the `(G, L, D)` layouts; returns `(out, lse)` float32."""
  G, Lq, D = q.shape
  Lk = k.shape[1]
  bs, Nq, Nk = static.block_size, Lq // static.block_size, Lk // static.block_size
  rows = static.rows_per_program(D, "fwd")
  row = lambda n: pl.BlockSpec((None, n), lambda g, i: (g, 0))
  row_blk = lambda d: pl.BlockSpec((None, rows, d), lambda g, i: (g, i, 0))
  head_blk = pl.BlockSpec((None, Lk, D), lambda g, i: (g, 0, 0))
  # lax.div, not `//`: g >= 0, and floor division lowers through `sign`.
  kmask_blk = pl.BlockSpec((None, Nk, bs), lambda g, i: (jax.lax.div(g, static.num_heads), 0, 0))
  kernel = functools.partial(
    _forward_kernel, block_size=bs, scale=static.scale, eps=static.eps, precision=static.precision
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
      row(views.cols_by_row_GxK.shape[1]),
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
  )(views.row_ptr_GxNq1, views.cols_by_row_GxK, q, k, v, kmask_rows, m0, l0, acc0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(9,))
def _attention(q, k, v, views, kmask_rows, kmask_col, m0, l0, acc0, static):
  """The op on the kernel layouts (leading axis G = B * H); see `_attention_fwd`."""
  del kmask_col  # only the backward pass reads the column layout
  return _forward(q, k, v, views, kmask_rows, m0, l0, acc0, static)


def _attention_fwd(q, k, v, views, kmask_rows, kmask_col, m0, l0, acc0, static):
  out, lse = _forward(q, k, v, views, kmask_rows, m0, l0, acc0, static)
  return (out, lse), (q, k, v, views, kmask_rows, kmask_col, m0, out, lse)


_attention.defvjp(_attention_fwd, pallas_triton_vjp.attention_bwd)


def pallas_triton_block_sparse_attention(
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
  eps: float = base.DEFAULT_EPS,
  precision: str | None = None,
  interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Block-sparse attention from an initial softmax state, as Pallas Triton kernels.

  Arguments and results as `base.block_sparse_attention_reference`, with `block_size` in
  `BLOCK_SIZES`. Differentiable (custom VJP) in q, k, v, l0 and acc0.

  Args:
    q_BxHxLqxD ... eps: as `base.block_sparse_attention_reference`.
    precision: float32 inputs' dot precision, one of `F32_PRECISIONS` ("bf16x3", "float32",
      "tf32x3", "tf32", "bf16"; see `pallas_triton_dots`); None means
      `DEFAULT_F32_PRECISION` ("bf16x3"). bfloat16 / float16 inputs always use their native
      dot and ignore it. Interpret mode emulates each choice's rounding.
    interpret: None (interpret mode unless jax's default backend is a GPU) or a bool.

  Returns:
    `(out_BxHxLqxD, lse_BxHxLq)`, both float32 whatever q's dtype.

  Raises:
    ValueError: on bad shapes, dtypes, block size, `precision` or `interpret`, before any
      kernel is built.
  """
  args = (
    q_BxHxLqxD,
    k_BxHxLkxD,
    v_BxHxLkxD,
    tile_ids_BxHxK,
    key_valid_BxLk,
    m0_BxHxLq,
    l0_BxHxLq,
    acc0_BxHxLqxD,
  )
  base.check_inputs(
    *args, block_size=block_size, block_sizes=BLOCK_SIZES, implementation="pallas_triton"
  )
  pallas_triton_dots.check_precision(precision)
  if interpret is None:
    interpret = jax.default_backend() not in ("gpu", "cuda", "rocm")
  if not isinstance(interpret, bool):
    raise ValueError(f"interpret must be None or a bool for pallas_triton, got {interpret=}")
  B, H, Lq, D = q_BxHxLqxD.shape
  Lk = k_BxHxLkxD.shape[2]
  G, Nq, Nk = B * H, Lq // block_size, Lk // block_size
  static = Static(
    num_heads=H,
    block_size=block_size,
    scale=D**-0.5 if scale is None else float(scale),
    eps=float(eps),
    interpret=interpret,
    precision=pallas_triton_dots.resolve_precision(precision, q_BxHxLqxD.dtype, interpret),
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
