"""Launches the block-sparse kernels through the Pallas Triton lowering (GPU).

The Triton lowering has no scalar prefetch: the index rows are ordinary inputs, one row per
program (block `(None, n)`), read with `ref[i]`. `compiler_params` is always given
explicitly, because since jax 0.9 a bare `pallas_call` on GPU means Mosaic GPU.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels import launch_spec


def _read_index(ref, g, i):
  del g  # the block already holds this program's row
  return ref[i]


def launch(
  kernel, call: launch_spec.CallSpec, *, interpret: Any, num_warps: int = 4, num_stages: int = 2
) -> Sequence[jax.Array]:
  """Runs `kernel` on `call`'s grid; index arrays become per-program input rows.

  `num_warps=4, num_stages=2` follow jax's own Triton flash-attention forward for small
  tiles; they are not yet tuned on a device.
  """
  if interpret is not None and not isinstance(interpret, bool):
    raise ValueError(f"the triton backend interprets with interpret=True only, got {interpret=}")
  index_specs = [pl.BlockSpec((None, a.shape[1]), lambda g, i: (g, 0)) for a in call.index_arrays]
  in_specs = [pl.BlockSpec(b.block_shape, b.index_map) for b in call.in_blocks]
  out_specs = [pl.BlockSpec(b.block_shape, b.index_map) for b in call.out_blocks]
  return pl.pallas_call(
    functools.partial(kernel, read_index=_read_index),
    out_shape=list(call.out_shapes),
    grid=call.grid,
    in_specs=index_specs + in_specs,
    out_specs=out_specs,
    interpret=bool(interpret),
    compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
    name=call.name,
  )(*call.index_arrays, *call.operands)
