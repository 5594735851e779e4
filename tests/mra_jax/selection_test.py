"""Block selection: budget, priors, ties, the high-resolution mask; and pooling."""
# pylint: disable=invalid-name

import jax
import jax.numpy as jnp
import numpy as np

from mra_jax import pooling, selection


def _scores(B=2, H=3, N=8, seed=0):
  return jax.random.normal(jax.random.key(seed), (B, H, N, N))


def test_selects_exactly_k_unique_sorted_in_range_best_tiles():
  scores = _scores()
  ids, high_res = selection.select_blocks(scores, 13)
  ids = np.asarray(ids)
  assert ids.shape == (2, 3, 13) and ids.dtype == np.int32
  for row in ids.reshape(-1, 13):
    assert len(set(row)) == 13 and (np.diff(row) > 0).all() and row.min() >= 0 and row.max() < 64
  flat = np.asarray(scores).reshape(2, 3, 64)
  best = np.sort(np.argsort(-flat, axis=-1, kind="stable")[..., :13], axis=-1)
  np.testing.assert_array_equal(ids, best)
  # Without ties the threshold mask is exactly the selected set.
  np.testing.assert_array_equal(np.asarray(high_res).reshape(2, 3, 64).sum(-1), 13)


def test_ties_at_the_boundary_take_the_lowest_flat_index():
  scores = jnp.zeros((1, 1, 4, 4)).at[0, 0, 3, 3].set(1.0)
  ids, high_res = selection.select_blocks(scores, 3)
  np.testing.assert_array_equal(ids[0, 0], [0, 1, 15])
  # The published threshold test marks every tied tile.
  assert bool(high_res.all())


def test_priors_are_always_selected():
  N = 8
  logits = _scores(N=N) * 10
  row_max = jnp.max(logits, -1)
  scores = selection.selection_scores(
    logits, row_max, prior_first_n_blocks=1, prior_diagonal_n_blocks=3
  )
  needed = {(r, c) for r in range(N) for c in range(N) if r == 0 or c == 0 or abs(r - c) <= 1}
  ids, _ = selection.select_blocks(scores, len(needed))
  for row in np.asarray(ids).reshape(-1, len(needed)):
    assert {(int(t) // N, int(t) % N) for t in row} == needed


def test_diagonal_prior_band_width():
  zeros = jnp.zeros((1, 1, 6, 6))
  for n, width in ((1, 1), (2, 3), (3, 3), (5, 5)):
    s = selection.selection_scores(
      zeros, zeros[..., 0], prior_first_n_blocks=0, prior_diagonal_n_blocks=n
    )
    assert int((s[0, 0, 3] > 0).sum()) == width, n


def test_low_resolution_penalty_and_unpenalised_row_max():
  q_hat = jnp.ones((1, 1, 2, 4))
  k_hat = jnp.concatenate([jnp.ones((1, 1, 1, 4)), jnp.zeros((1, 1, 1, 4))], axis=2)
  counts_q = jnp.array([[32.0, 32.0]])
  counts_k = jnp.array([[32.0, 0.0]])
  logits, row_max = selection.low_resolution_logits(q_hat, k_hat, counts_q, counts_k, 0.5)
  np.testing.assert_allclose(logits[0, 0], [[2.0, -1e4], [2.0, -1e4]])
  np.testing.assert_allclose(row_max[0, 0], [2.0, 2.0])


def test_pooling_of_full_partial_and_empty_blocks():
  x = jnp.arange(12.0).reshape(1, 1, 12, 1)
  valid = jnp.array([[True] * 4 + [True, True, False, False] + [False] * 4])
  np.testing.assert_allclose(pooling.block_counts(valid, 4), [[4.0, 2.0, 0.0]])
  means = pooling.block_means(jnp.where(valid[:, None, :, None], x, jnp.nan), valid, 4)
  np.testing.assert_allclose(means[0, 0, :, 0], [1.5, 4.5, 0.0], rtol=1e-6)
