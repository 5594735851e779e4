"""What the Pallas Triton kernels share: static settings, launch settings, the launch itself.

The launch settings (rows per program, warps, pipeline stages, two-pass dK/dV) were chosen
from ptxas' register and spill report for an H100 (`benchmarks.compile_report_gpu`,
docs/kernels.md). `launch` decides between the compiled kernel and the HLO interpreter by the
platform the program is lowered for, so a program compiled for a GPU target from a CPU host
(`pallas_kernels.compile_only`) gets the Triton kernels.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.block_sparse_attention import index_views, pallas_triton_dots

# The three kernels, by the names their launch settings are chosen for.
KERNELS = ("fwd", "dq", "dkv")
# Float32 dots whose operands take the most registers: IEEE "float32" spreads them over the
# threads for scalar FMAs, "tf32x3" holds three float32 copies of each (bf16x3's are bf16).
REGISTER_HUNGRY = ("float32", "tf32x3")


class Static(NamedTuple):
  """The op's static settings, shared by the forward and backward launches.

  Attributes:
    num_heads: Hk, the kv heads (programs of one batch element share its key mask).
    block_size: tile side, in `pallas_triton.BLOCK_SIZES`.
    scale: logit scale.
    eps: added to the normaliser.
    precision: float32 dot precision (a key of `pallas_triton_dots.F32_PRECISIONS`), None
      for half-precision inputs (their native dot).
    interpret: run the kernels in interpret mode; None: decided by the platform the
      program is lowered for (`launch` resolves it for each kernel).
    group: query heads per kv head (grouped-query attention; 1 otherwise).
    causal: mask keys after each query on the tiles that reach the diagonal.
    num_q_blocks: Nq.
    num_k_blocks: Nk.
  """

  num_heads: int
  block_size: int
  scale: float
  eps: float
  precision: str | None
  interpret: bool | None
  group: int = 1
  causal: bool = False
  num_q_blocks: int = 0
  num_k_blocks: int = 0

  @property
  def dots(self) -> pallas_triton_dots.DotPrecision | None:
    """The kernels' dot precision: interpret mode emulates the GPU's rounding."""
    if self.precision is None:
      return None
    return pallas_triton_dots.DotPrecision(self.precision, emulate=bool(self.interpret))

  def launch_params(self, head_dim: int, kernel: str) -> pltriton.CompilerParams:
    """The Triton launch settings of `kernel` (one of `KERNELS`) for a (padded) head dim."""
    rows = self.rows_per_program(head_dim, kernel)
    params = compiler_params(rows, self.block_size, head_dim, self.precision, self.causal)
    if self.causal and kernel == "dkv" and self.precision == "float32":
      # IEEE float32's causal dK/dV (four loops of scalar-FMA dots): ptxas spilled 256 B at
      # block 64 / D 128 with two stages, none with three.
      params = dataclasses.replace(params, num_stages=3)
    return params

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

    With grouped-query attention a forward or dQ program holds several query heads' rows
    of a block (they then share each K/V tile load), as many as `_group_rows` allows.
    """
    if kernel not in KERNELS:
      raise ValueError(f"kernel must be one of {KERNELS}, got {kernel=}")
    rows = _block_rows(self.block_size, head_dim, self.precision, kernel, self.causal)
    if kernel == "dkv" or self.group == 1 or rows < self.block_size:
      return rows
    # A power of two that divides the group's stacked rows (Triton loads powers of two).
    rows = min(self.group * self.block_size, _group_rows(head_dim, self.precision, kernel))
    while (self.group * self.block_size) % rows:
      rows //= 2
    return max(rows, self.block_size)

  def offsets_length(self, view: str) -> int:
    """Entries of a program's offsets row: Nq + 1 ("row") or Nk + 1 ("column") CSR offsets,
    followed for a causal op by Nq (Nk) diagonal splits (`index_views.TileViews`)."""
    n = self.num_q_blocks if view == "row" else self.num_k_blocks
    return n + 1 + (n if self.causal else 0)

  def dkv_two_passes(self, head_dim: int) -> bool:
    """Whether dK/dV walks each column twice, one float32 accumulator live at a time.

    Where blocks are split, and for the register-hungry dots (`REGISTER_HUNGRY`), the two
    accumulators beside the Q/dO tiles spill; one extra `K Q^T` per tile removes that.
    """
    if self.precision is None:
      return False
    split = self.rows_per_program(head_dim, "dkv") < self.block_size
    return split or self.precision in REGISTER_HUNGRY


def loop_tiles(start, stop, split, body, carry, *, masked_first: bool):
  """`body(i, carry, masked=...)` for i in [start, stop), as `fori_loop`s.

  With `split` (causal), the entries before it run with `masked=masked_first` and the rest with
  the other value, so only the tiles that reach the diagonal pay for the in-tile mask; with
  `split=None` (bidirectional) every entry runs unmasked.
  """
  if split is None:
    return jax.lax.fori_loop(start, stop, functools.partial(body, masked=False), carry)
  carry = jax.lax.fori_loop(start, split, functools.partial(body, masked=masked_first), carry)
  return jax.lax.fori_loop(split, stop, functools.partial(body, masked=not masked_first), carry)


def _block_rows(
  block_size: int, head_dim: int, precision: str | None, kernel: str, causal: bool = False
) -> int:
  """Rows of one program of a head's block: the block, or half or a quarter of it.

  See `Static.rows_per_program`.
  """
  if precision is None:
    return block_size
  rows = block_size
  if block_size > 32 and (head_dim > 64 or precision == "float32"):
    rows = 32
  if precision in REGISTER_HUNGRY and (
    block_size * head_dim > 64 * 64 or causal or (precision == "tf32x3" and kernel == "dkv")
  ):
    # Triton's dot needs 16 rows or more (only D > 128 would ask for fewer).
    rows = min(rows, max(16, 32 * 64 // head_dim))
  return rows


# The most query rows a grouped forward or dQ program holds: what compiles without spills
# against 64-row key tiles (`_block_rows` at block 64), for half precision twice that (8
# warps).
def _group_rows(head_dim: int, precision: str | None, kernel: str) -> int:
  rows = _block_rows(64, head_dim, precision, kernel)
  return 2 * rows if precision is None else rows


def num_warps(rows: int, block_size: int, head_dim: int, precision: str | None) -> int:
  """Warps per program of `rows` rows of a block size: `head_dim` already padded.

  Chosen from ptxas' register and spill report for an H100 (`benchmarks.compile_report_gpu`).
  Half-precision operands fit 4 warps up to 64 x 128 rows (a block; past that, only a
  grouped program's several heads, 8). Float32 operands take twice the registers, and the
  bf16x3 / tf32x3 splits hold two more copies of each operand: past a 32 x 64 block (and
  for IEEE float32, whose scalar-FMA dot spreads operands over every thread) 8 warps keep
  them in registers, also in programs that hold part of a block (they load whole K/V or
  Q/dO tiles of the block).
  """
  if precision is None:
    return 4 if rows * head_dim <= 64 * 128 else 8
  if max(rows, block_size) * head_dim > 32 * 64 or precision == "float32":
    return 8
  return 4


def compiler_params(
  rows: int, block_size: int, head_dim: int, precision: str | None, causal: bool = False
) -> pltriton.CompilerParams:
  """Triton launch settings of a program of `rows` rows of a block: see `num_warps`.

  Two pipeline stages let Triton prefetch the next tile's K/V (Q/dO) rows into shared
  memory while the current one is multiplied (jax's own Triton attention uses 2). Programs
  that hold half a 64-row block (`Static.rows_per_program`) use one stage: the prefetched
  64-row float32 tiles cost the registers that otherwise spill. Quarter-block (16-row)
  programs have the registers for two stages, and IEEE float32 there spills with one.
  Causal programs walk two loops per pass (the diagonal tiles' masked one beside the
  others): with one stage ptxas spilled there (16 B in float32 dK/dV at block 64 / D 128,
  up to 456 B at IEEE float32), with two not, so they always take two.
  """
  warps = num_warps(rows, block_size, head_dim, precision)
  one_stage = (rows, block_size) == (32, 64) and not causal
  return pltriton.CompilerParams(num_warps=warps, num_stages=1 if one_stage else 2)


def row_offsets(views: index_views.TileViews, static: Static) -> jax.Array:
  """A program's row-view offsets: `(G, Nq + 1)` CSR offsets, then (causal) `(G, Nq)` splits."""
  if not static.causal:
    return views.row_ptr_GxNq1
  return jnp.concatenate([views.row_ptr_GxNq1, views.row_split_GxNq], axis=1)


def column_offsets(views: index_views.TileViews, static: Static) -> jax.Array:
  """A program's column-view offsets: `(G, Nk + 1)`, then (causal) `(G, Nk)` splits."""
  if not static.causal:
    return views.col_ptr_GxNk1
  return jnp.concatenate([views.col_ptr_GxNk1, views.col_split_GxNk], axis=1)


def causal_keep(
  row_first, num_rows: int, row_block, col_block, block_size: int, *, rows_are_queries
):
  """`(num_rows, bs)` bool: where a tile's key position is at or before its query position.

  The tile's rows are a program's `num_rows` rows starting at stacked row `row_first` of
  block `row_block` (a row's position in its block is `row_first + i` mod bs: rows stack
  whole blocks, `layouts`), its columns the bs positions of block `col_block`. Rows are
  queries (forward, dQ) or keys (the transposed dK/dV tile).
  """
  bs = block_size
  i_Rx1 = jnp.bitwise_and(row_first + jax.lax.broadcasted_iota(jnp.int32, (num_rows, 1), 0), bs - 1)
  j_1xBs = jax.lax.broadcasted_iota(jnp.int32, (1, bs), 1)
  if rows_are_queries:
    return (col_block - row_block) * bs + j_1xBs <= i_Rx1
  return (row_block - col_block) * bs + i_Rx1 <= j_1xBs


def launch(
  static: Static, build: Callable[[Static], Callable[..., object]], operands: Sequence[jax.Array]
):
  """`build(static)(*operands)`, with `static.interpret` None decided at lowering.

  With None, a program lowered for a GPU ("cuda", "rocm") gets the compiled kernel and any
  other platform the HLO interpreter (`lax.platform_dependent`), so a program compiled for a
  GPU target from a CPU host gets the Triton kernel whatever jax's default backend is.
  """
  if static.interpret is not None:
    return build(static)(*operands)
  compiled = lambda *xs: build(static._replace(interpret=False))(*xs)
  interpreted = lambda *xs: build(static._replace(interpret=True))(*xs)
  return jax.lax.platform_dependent(*operands, cuda=compiled, rocm=compiled, default=interpreted)
