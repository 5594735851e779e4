"""A backend-neutral description of one kernel launch, filled in by the op, run by a backend."""
# pylint: disable=invalid-name

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax


class Block(NamedTuple):
  """Block shape (`None` squeezes a dim) and index map `(g, i) -> block indices`."""

  block_shape: tuple[int | None, ...]
  index_map: Callable[[jax.Array, jax.Array], tuple]


class CallSpec(NamedTuple):
  """Everything a backend needs to launch a 2-D grid kernel.

  Attributes:
    name: kernel name (shows in profiles and HLO).
    grid: `(G, blocks)`; the first axis is the (batch * head).
    index_arrays: int32 `(G, n)` arrays, passed first to the kernel; each program reads its
      own row `g` through the kernel's `read_index`.
    operands: array inputs, in kernel order after the index refs.
    in_blocks: one `Block` per operand.
    out_shapes: `jax.ShapeDtypeStruct` per output.
    out_blocks: one `Block` per output.
  """

  name: str
  grid: tuple[int, int]
  index_arrays: Sequence[jax.Array]
  operands: Sequence[jax.Array]
  in_blocks: Sequence[Block]
  out_shapes: Sequence[jax.ShapeDtypeStruct]
  out_blocks: Sequence[Block]
