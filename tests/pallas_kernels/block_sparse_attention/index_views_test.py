"""Row (CSR) and column views of a tile pattern, against a direct numpy construction."""
# pylint: disable=invalid-name

import jax
import numpy as np
import pytest

from pallas_kernels.block_sparse_attention import index_views


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
    assert all(x.dtype == np.int32 for x in views)


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
