"""Row (CSR) and column views of a block-sparse tile pattern, built on device inside `jit`.

The MRA selection is a global top-k over all `Nq * Nk` tiles of a (batch, head), so each
query-block row holds an uneven number of tiles (some none). Every array here has a static
shape: `K` (tiles per head) is static and offsets are stored per row / per column.

* Row view (forward, dQ): tile ids are sorted, so the row-major order is the given order.
  `row_ptr[r]..row_ptr[r+1]` indexes `cols_by_row`.
* Column view (dK, dV): the same tiles re-sorted by `(c, r)`. `col_ptr[c]..col_ptr[c+1]`
  indexes `rows_by_col`; `perm` maps a column-view position to its row-view position.

The Pallas implementations read both views: dQ walks rows and dK/dV walk columns, so no
output block has two writers.
"""
# pylint: disable=invalid-name

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class TileViews(NamedTuple):
  """Both views of one tile pattern, all int32, leading axis `G = B * H` (one per head).

  Attributes:
    row_ptr_GxNq1: `(G, Nq + 1)` CSR offsets of each query-block row.
    cols_by_row_GxK: `(G, K)` key-block index of each tile, row-major order.
    col_ptr_GxNk1: `(G, Nk + 1)` offsets of each key-block column in the column view.
    rows_by_col_GxK: `(G, K)` query-block index of each tile, column-major order.
    perm_GxK: `(G, K)` row-view position of each column-view entry.
  """

  row_ptr_GxNq1: jax.Array
  cols_by_row_GxK: jax.Array
  col_ptr_GxNk1: jax.Array
  rows_by_col_GxK: jax.Array
  perm_GxK: jax.Array


def _offsets(segment_ids_GxK: jax.Array, num_segments: int) -> jax.Array:
  """Exclusive prefix sums of segment sizes: `(G, num_segments + 1)` int32."""
  G, K = segment_ids_GxK.shape
  counts_GxS = (
    jnp.zeros((G, num_segments), jnp.int32)
    .at[jnp.arange(G)[:, None], segment_ids_GxK]
    .add(jnp.ones((G, K), jnp.int32))
  )
  return jnp.concatenate(
    [jnp.zeros((G, 1), jnp.int32), jnp.cumsum(counts_GxS, axis=1, dtype=jnp.int32)], axis=1
  )


def build_tile_views(tile_ids_GxK: jax.Array, *, num_q_blocks: int, num_k_blocks: int) -> TileViews:
  """Builds the row and column views of flat, sorted, unique tile ids.

  Args:
    tile_ids_GxK: int `(G, K)` flat ids `r * num_k_blocks + c`, sorted ascending and
      unique within each row of the array.
    num_q_blocks: Nq, the number of query blocks.
    num_k_blocks: Nk, the number of key blocks.

  Returns:
    A `TileViews` (int32, no gradient). With no tile at all (K = 0) every row and column
    is empty and the index arrays hold one entry that no loop reads, so that no kernel
    operand has a zero-sized dimension.
  """
  ids_GxK = jax.lax.stop_gradient(tile_ids_GxK).astype(jnp.int32)
  if ids_GxK.shape[1] == 0:
    G = ids_GxK.shape[0]
    unread_Gx1 = jnp.zeros((G, 1), jnp.int32)
    return TileViews(
      row_ptr_GxNq1=jnp.zeros((G, num_q_blocks + 1), jnp.int32),
      cols_by_row_GxK=unread_Gx1,
      col_ptr_GxNk1=jnp.zeros((G, num_k_blocks + 1), jnp.int32),
      rows_by_col_GxK=unread_Gx1,
      perm_GxK=unread_Gx1,
    )
  rows_GxK = ids_GxK // num_k_blocks
  cols_GxK = ids_GxK % num_k_blocks
  # The transposed flat id orders tiles by column, then row; the ids are unique, so
  # so is this key and any sort is stable enough.
  perm_GxK = jnp.argsort(cols_GxK * num_q_blocks + rows_GxK, axis=1).astype(jnp.int32)
  return TileViews(
    row_ptr_GxNq1=_offsets(rows_GxK, num_q_blocks),
    cols_by_row_GxK=cols_GxK,
    col_ptr_GxNk1=_offsets(cols_GxK, num_k_blocks),
    rows_by_col_GxK=jnp.take_along_axis(rows_GxK, perm_GxK, axis=1),
    perm_GxK=perm_GxK,
  )
