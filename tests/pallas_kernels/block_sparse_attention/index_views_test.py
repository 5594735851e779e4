"""Row (CSR) and column views of a tile pattern, against a direct numpy construction."""
# pylint: disable=invalid-name

import jax
import numpy as np
import pytest

from pallas_kernels.block_sparse_attention import index_views, layouts


@pytest.mark.parametrize("Nq, Nk, K", [(4, 4, 5), (3, 6, 18), (8, 2, 1)])
def test_views_match_numpy(Nq, Nk, K):
  rng = np.random.default_rng(Nq * 100 + K)
  ids_GxK = np.stack([np.sort(rng.choice(Nq * Nk, K, replace=False)) for _ in range(3)])
  views = jax.jit(index_views.build_tile_views, static_argnames=("num_q_blocks", "num_k_blocks"))(
    ids_GxK.astype(np.int32), num_q_blocks=Nq, num_k_blocks=Nk
  )
  for g in range(3):
    rows, cols = ids_GxK[g] // Nk, ids_GxK[g] % Nk
    row_ptr = np.searchsorted(rows, np.arange(Nq + 1))
    np.testing.assert_array_equal(views.row_ptr_GxNq1[g], row_ptr)
    np.testing.assert_array_equal(views.cols_by_row_GxK[g], cols)
    # Each column's entries, in increasing row order.
    for c in range(Nk):
      lo, hi = int(views.col_ptr_GxNk1[g, c]), int(views.col_ptr_GxNk1[g, c + 1])
      np.testing.assert_array_equal(views.rows_by_col_GxK[g, lo:hi], np.sort(rows[cols == c]))
      perm = np.asarray(views.perm_GxK[g, lo:hi])
      np.testing.assert_array_equal(cols[perm], c)
      np.testing.assert_array_equal(rows[perm], views.rows_by_col_GxK[g, lo:hi])
    assert int(views.col_ptr_GxNk1[g, -1]) == K
    assert all(x.dtype == np.int32 for x in views if x is not None)


def test_uneven_rows_include_empty_rows():
  # Global top-k: row 0 holds three tiles, rows 1 and 3 none, row 2 one.
  views = index_views.build_tile_views(
    np.array([[0, 1, 3, 9]], np.int32), num_q_blocks=4, num_k_blocks=4
  )
  np.testing.assert_array_equal(views.row_ptr_GxNq1[0], [0, 3, 3, 4, 4])
  np.testing.assert_array_equal(views.col_ptr_GxNk1[0], [0, 1, 3, 3, 4])
  np.testing.assert_array_equal(views.rows_by_col_GxK[0], [0, 0, 2, 0])
  np.testing.assert_array_equal(views.perm_GxK[0], [0, 1, 3, 2])


def test_no_tiles_gives_empty_rows_and_columns():
  views = index_views.build_tile_views(np.zeros((2, 0), np.int32), num_q_blocks=3, num_k_blocks=4)
  np.testing.assert_array_equal(views.row_ptr_GxNq1, np.zeros((2, 4)))
  np.testing.assert_array_equal(views.col_ptr_GxNk1, np.zeros((2, 5)))
  # One unread entry keeps every kernel operand non-empty.
  assert views.cols_by_row_GxK.shape == views.rows_by_col_GxK.shape == (2, 1)


@pytest.mark.parametrize("Nq, Nk, K", [(4, 4, 7), (5, 5, 12)])
def test_causal_splits_mark_where_rows_and_columns_meet_the_diagonal(Nq, Nk, K):
  rng = np.random.default_rng(K)
  ids_GxK = np.stack([np.sort(rng.choice(Nq * Nk, K, replace=False)) for _ in range(2)])
  views = index_views.build_tile_views(
    ids_GxK.astype(np.int32), num_q_blocks=Nq, num_k_blocks=Nk, causal=True
  )
  for g in range(2):
    rows, cols = ids_GxK[g] // Nk, ids_GxK[g] % Nk
    for r in range(Nq):
      # Row r: the tiles before the split have c < r, from it on c >= r.
      lo, split = int(views.row_ptr_GxNq1[g, r]), int(views.row_split_GxNq[g, r])
      hi = int(views.row_ptr_GxNq1[g, r + 1])
      assert all(views.cols_by_row_GxK[g, lo:split] < r)
      assert all(views.cols_by_row_GxK[g, split:hi] >= r)
    for c in range(Nk):
      # Column c: up to the split r <= c, after it r > c.
      lo, split = int(views.col_ptr_GxNk1[g, c]), int(views.col_split_GxNk[g, c])
      hi = int(views.col_ptr_GxNk1[g, c + 1])
      assert all(views.rows_by_col_GxK[g, lo:split] <= c)
      assert all(views.rows_by_col_GxK[g, split:hi] > c)
    assert int(np.sum(cols >= rows)) == int(
      np.sum(views.row_ptr_GxNq1[g, 1:] - views.row_split_GxNq[g])
    )


def test_group_members_walk_each_column_once_per_query_head():
  views = index_views.build_tile_views(
    np.array([[0, 1, 3, 9]], np.int32), num_q_blocks=4, num_k_blocks=4, causal=True
  )
  members = index_views.per_group_member(views, 2)
  # Column 1 holds rows 0 and 2: virtual blocks 0, 1 (row 0) then 4, 5 (row 2).
  np.testing.assert_array_equal(members.col_ptr_GxNk1[0], [0, 2, 6, 6, 8])
  np.testing.assert_array_equal(members.rows_by_col_GxK[0], [0, 1, 0, 1, 4, 5, 0, 1])
  # Each column's entries with r <= c (masked by a causal kernel) come first, to the split.
  np.testing.assert_array_equal(members.col_split_GxNk[0], [2, 4, 6, 8])
  np.testing.assert_array_equal(members.row_ptr_GxNq1, views.row_ptr_GxNq1)
  assert index_views.per_group_member(views, 1) is views


def test_grouped_rows_stack_a_group_block_by_block():
  # B=1, 4 query heads on 2 kv heads, 2 blocks of 2: kv head 0's rows are heads 0, 1 of
  # block 0, then heads 0, 1 of block 1.
  x = np.arange(1 * 4 * 4).reshape(1, 4, 4)
  stacked = layouts.group_rows(x, kv_heads=2, block_size=2)
  np.testing.assert_array_equal(stacked[0, 0], [0, 1, 4, 5, 2, 3, 6, 7])
  np.testing.assert_array_equal(layouts.ungroup_rows(stacked, heads=4, block_size=2), x)
  assert layouts.group_rows(x, kv_heads=4, block_size=2) is x
