"""What the Pallas Triton kernels share: static settings, launch settings, the launch itself.

The launch settings (rows per program, warps, pipeline stages, two-pass dK/dV) were chosen
from ptxas' register and spill report for an H100 (`benchmarks.compile_report_gpu`,
docs/kernels.md). `launch` decides between the compiled kernel and the HLO interpreter by the
platform the program is lowered for, so a program compiled for a GPU target from a CPU host
(`pallas_kernels.compile_only`) gets the Triton kernels.
"""
# pylint: disable=invalid-name

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.block_sparse_attention import pallas_triton_dots

# The three kernels, by the names their launch settings are chosen for.
KERNELS = ("fwd", "dq", "dkv")
# Float32 dots whose operands take the most registers: IEEE "float32" spreads them over the
# threads for scalar FMAs, "tf32x3" holds three float32 copies of each (bf16x3's are bf16).
REGISTER_HUNGRY = ("float32", "tf32x3")


class Static(NamedTuple):
  """The op's static settings, shared by the forward and backward launches.

  Attributes:
    num_heads: H (programs of one batch element share its key mask).
    block_size: tile side, in `pallas_triton.BLOCK_SIZES`.
    scale: logit scale.
    eps: added to the normaliser.
    precision: float32 dot precision (a key of `pallas_triton_dots.F32_PRECISIONS`), None
      for half-precision inputs (their native dot).
    interpret: run the kernels in interpret mode; None: decided by the platform the
      program is lowered for (`launch` resolves it for each kernel).
  """

  num_heads: int
  block_size: int
  scale: float
  eps: float
  precision: str | None
  interpret: bool | None

  @property
  def dots(self) -> pallas_triton_dots.DotPrecision | None:
    """The kernels' dot precision: interpret mode emulates the GPU's rounding."""
    if self.precision is None:
      return None
    return pallas_triton_dots.DotPrecision(self.precision, emulate=bool(self.interpret))

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
    if self.block_size > 32 and (head_dim > 64 or self.precision == "float32"):
      rows = 32
    if (self.precision in REGISTER_HUNGRY and self.block_size * head_dim > 64 * 64) or (
      self.precision == "tf32x3" and kernel == "dkv"
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
    return split or self.precision in REGISTER_HUNGRY


def num_warps(block_size: int, head_dim: int, precision: str | None) -> int:
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
  if block_size * head_dim > 32 * 64 or precision == "float32":
    return 8
  return 4


def compiler_params(
  rows: int, block_size: int, head_dim: int, precision: str | None
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
