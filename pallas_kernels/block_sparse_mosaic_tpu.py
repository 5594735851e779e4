"""Launches the block-sparse kernels through Mosaic (TPU), block indices by scalar prefetch.

The index arrays are scalar-prefetched into SMEM (whole `(G, n)` arrays; each program reads
its row with `ref[g, i]`). Every grid step writes its own output block exactly once, so both
grid axes are "parallel" and no output block is ever revisited.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import launch_spec


def _read_index(ref, g, i):
  return ref[g, i]


def _with_prefetch_args(index_map):
  # Scalar-prefetch refs are appended to every index map's arguments; ours ignore them.
  return lambda g, i, *_: index_map(g, i)


def launch(
  kernel, call: launch_spec.CallSpec, *, interpret: Any, vmem_limit_bytes: int | None = None
) -> Sequence[jax.Array]:
  """Runs `kernel` on `call`'s grid with the index arrays in SMEM.

  `interpret` may be a bool (HLO interpret mode) or a `pltpu.InterpretParams` (TPU
  interpret mode: simulated memories, DMA and output-revisit checks).
  """
  spec = lambda b: pl.BlockSpec(b.block_shape, _with_prefetch_args(b.index_map))
  grid_spec = pltpu.PrefetchScalarGridSpec(
    num_scalar_prefetch=len(call.index_arrays),
    grid=call.grid,
    in_specs=[spec(b) for b in call.in_blocks],
    out_specs=[spec(b) for b in call.out_blocks],
  )
  return pl.pallas_call(
    functools.partial(kernel, read_index=_read_index),
    out_shape=list(call.out_shapes),
    grid_spec=grid_spec,
    interpret=False if interpret is None else interpret,
    compiler_params=pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel"), vmem_limit_bytes=vmem_limit_bytes
    ),
    name=call.name,
  )(*call.index_arrays, *call.operands)
