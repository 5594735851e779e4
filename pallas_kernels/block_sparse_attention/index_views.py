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

For a causal op the views also say where each run of tiles meets the diagonal. A row's
tiles are sorted by c, so those with c >= r (the diagonal tile, and tiles above it that a
causal pattern does not have) end the row, from `row_split`; a column's are sorted by r, so
those with r <= c begin it, up to `col_split`. Kernels mask only those, so that a
lower-triangular pattern pays for the mask on its diagonal tiles alone.
"""
# pylint: disable=invalid-name

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class TileViews(NamedTuple):
  """Both views of one tile pattern, all int32, leading axis G (one per kv head: B * Hk).

  Attributes:
    row_ptr_GxNq1: `(G, Nq + 1)` CSR offsets of each query-block row.
    cols_by_row_GxK: `(G, K)` key-block index of each tile, row-major order.
    col_ptr_GxNk1: `(G, Nk + 1)` offsets of each key-block column in the column view.
    rows_by_col_GxK: `(G, K)` query-block index of each tile, column-major order.
    perm_GxK: `(G, K)` row-view position of each column-view entry.
    row_split_GxNq: causal only (else None): `(G, Nq)` first position of row r's tiles
      with c >= r, the ones a causal kernel masks (`row_ptr[r + 1]` if none).
    col_split_GxNk: causal only (else None): `(G, Nk)` first position of column c's tiles
      with r > c, after the ones a causal kernel masks (`col_ptr[c]` if none).
  """

  row_ptr_GxNq1: jax.Array
  cols_by_row_GxK: jax.Array
  col_ptr_GxNk1: jax.Array
  rows_by_col_GxK: jax.Array
  perm_GxK: jax.Array
  row_split_GxNq: jax.Array | None = None
  col_split_GxNk: jax.Array | None = None


def _counts(segment_ids_GxK: jax.Array, num_segments: int, weights_GxK=None) -> jax.Array:
  """`(G, num_segments)` int32: how many entries (or how much weight) each segment holds."""
  G, K = segment_ids_GxK.shape
  weights_GxK = jnp.ones((G, K), jnp.int32) if weights_GxK is None else weights_GxK
  return (
    jnp.zeros((G, num_segments), jnp.int32)
    .at[jnp.arange(G)[:, None], segment_ids_GxK]
    .add(weights_GxK.astype(jnp.int32))
  )


def _offsets(segment_ids_GxK: jax.Array, num_segments: int) -> jax.Array:
  """Exclusive prefix sums of segment sizes: `(G, num_segments + 1)` int32."""
  G = segment_ids_GxK.shape[0]
  counts_GxS = _counts(segment_ids_GxK, num_segments)
  return jnp.concatenate(
    [jnp.zeros((G, 1), jnp.int32), jnp.cumsum(counts_GxS, axis=1, dtype=jnp.int32)], axis=1
  )


def build_tile_views(
  tile_ids_GxK: jax.Array, *, num_q_blocks: int, num_k_blocks: int, causal: bool = False
) -> TileViews:
  """Builds the row and column views of flat, sorted, unique tile ids.

  Args:
    tile_ids_GxK: int `(G, K)` flat ids `r * num_k_blocks + c`, sorted ascending and
      unique within each row of the array.
    num_q_blocks: Nq, the number of query blocks.
    num_k_blocks: Nk, the number of key blocks.
    causal: also build where each row and column meets the diagonal (`row_split_GxNq`,
      `col_split_GxNk`).

  Returns:
    A `TileViews` (int32, no gradient). With no tile at all (K = 0) every row and column
    is empty and the index arrays hold one entry that no loop reads, so that no kernel
    operand has a zero-sized dimension.
  """
  ids_GxK = jax.lax.stop_gradient(tile_ids_GxK).astype(jnp.int32)
  if ids_GxK.shape[1] == 0:
    G = ids_GxK.shape[0]
    unread_Gx1 = jnp.zeros((G, 1), jnp.int32)
    zeros = lambda n: jnp.zeros((G, n), jnp.int32)
    return TileViews(
      row_ptr_GxNq1=zeros(num_q_blocks + 1),
      cols_by_row_GxK=unread_Gx1,
      col_ptr_GxNk1=zeros(num_k_blocks + 1),
      rows_by_col_GxK=unread_Gx1,
      perm_GxK=unread_Gx1,
      row_split_GxNq=zeros(num_q_blocks) if causal else None,
      col_split_GxNk=zeros(num_k_blocks) if causal else None,
    )
  rows_GxK = ids_GxK // num_k_blocks
  cols_GxK = ids_GxK % num_k_blocks
  # The transposed flat id orders tiles by column, then row; the ids are unique, so
  # so is this key and any sort is stable enough.
  perm_GxK = jnp.argsort(cols_GxK * num_q_blocks + rows_GxK, axis=1).astype(jnp.int32)
  row_ptr_GxNq1 = _offsets(rows_GxK, num_q_blocks)
  col_ptr_GxNk1 = _offsets(cols_GxK, num_k_blocks)
  row_split_GxNq = col_split_GxNk = None
  if causal:
    # A row's tiles before the diagonal (c < r) come first; a column's on or above it
    # (r <= c) come first.
    row_split_GxNq = row_ptr_GxNq1[:, :-1] + _counts(rows_GxK, num_q_blocks, cols_GxK < rows_GxK)
    col_split_GxNk = col_ptr_GxNk1[:, :-1] + _counts(cols_GxK, num_k_blocks, rows_GxK <= cols_GxK)
  return TileViews(
    row_ptr_GxNq1=row_ptr_GxNq1,
    cols_by_row_GxK=cols_GxK,
    col_ptr_GxNk1=col_ptr_GxNk1,
    rows_by_col_GxK=jnp.take_along_axis(rows_GxK, perm_GxK, axis=1),
    perm_GxK=perm_GxK,
    row_split_GxNq=row_split_GxNq,
    col_split_GxNk=col_split_GxNk,
  )


def per_group_member(views: TileViews, group: int) -> TileViews:
  """The column view with each query block r of a tile stood for by `group` virtual blocks.

  With grouped-query attention a kv head's `group` query heads share its tiles. A dK/dV
  program walks its column over (tile, query head) pairs: entry `t * group + i` of the
  returned column view is virtual query block `r * group + i`, the rows of query head i of
  block r in the group-stacked layout (`layouts`), and `perm` maps it to tile t's row-view
  position. Offsets and splits scale by `group`; the row view is unchanged. group 1 returns
  `views` itself.
  """
  if group == 1:
    return views
  scale = lambda x: None if x is None else x * group
  G, K = views.rows_by_col_GxK.shape
  virtual_GxKxI = views.rows_by_col_GxK[:, :, None] * group + jnp.arange(group)[None, None, :]
  return views._replace(
    col_ptr_GxNk1=scale(views.col_ptr_GxNk1),
    rows_by_col_GxK=virtual_GxKxI.reshape(G, K * group),
    perm_GxK=jnp.repeat(views.perm_GxK, group, axis=1),
    col_split_GxNk=scale(views.col_split_GxNk),
  )
