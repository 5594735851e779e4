"""Low-resolution logits and block selection.

Selection is a global top-k over the whole Nq x Nk block grid of each (batch, head),
on row-normalised low-resolution logits plus the optional priors, exactly as the
published `get_block_idxes`; so rows receive uneven numbers of tiles.

Ties at the top-k boundary are broken deterministically: among equal scores the
lowest flat tile index `r * Nk + c` is taken first (`jax.lax.top_k` is stable). The
published code leaves this to PyTorch's top-k, which documents no order; the golden
cases avoid ties. The steps are described in docs/algorithm.md, from "Low-resolution
logits and the padding penalty" to "Ties".
"""
# pylint: disable=invalid-name

from __future__ import annotations

import jax
import jax.numpy as jnp

# Published constants: the additive prior boost and the penalty on block pairs with an
# all-padding side (both large enough to dominate any real logit).
PRIOR_BOOST = 5e3
PADDING_PENALTY = 1e4


def low_resolution_logits(
  q_hat_BxHxNqxD: jax.Array,
  k_hat_BxHxNkxD: jax.Array,
  count_q_BxNq: jax.Array,
  count_k_BxNk: jax.Array,
  scale: float,
) -> tuple[jax.Array, jax.Array]:
  """Block-mean logits, their unpenalised row maximum, and the padding penalty.

  Args:
    q_hat_BxHxNqxD: float32 pooled queries.
    k_hat_BxHxNkxD: float32 pooled keys.
    count_q_BxNq: float32 real tokens per query block.
    count_k_BxNk: float32 real tokens per key block.
    scale: logit scale, 1/sqrt(D).

  Returns:
    `(logits_BxHxNqxNk, row_max_BxHxNq)`: float32 logits with the published -1e4
    penalty on every pair whose query or key block holds no real token, and the row
    maximum taken *before* that penalty, as the published code does (so a padded
    key block's logit of 0 can be the maximum; it only shifts the selection scores).
  """
  logits = jnp.einsum("bhqd,bhkd->bhqk", q_hat_BxHxNqxD, k_hat_BxHxNkxD) * scale
  row_max_BxHxNq = jnp.max(logits, axis=-1)
  empty_pair = (count_q_BxNq[:, :, None] * count_k_BxNk[:, None, :]) < 0.5
  logits = logits - PADDING_PENALTY * empty_pair[:, None].astype(jnp.float32)
  return logits, row_max_BxHxNq


def selection_scores(
  logits_BxHxNqxNk: jax.Array,
  row_max_BxHxNq: jax.Array,
  *,
  prior_first_n_blocks: int,
  prior_diagonal_n_blocks: int,
) -> jax.Array:
  """Row-normalised logits plus the priors: what the top-k ranks (float32)."""
  _, _, Nq, Nk = logits_BxHxNqxNk.shape
  scores = logits_BxHxNqxNk - row_max_BxHxNq[..., None]
  rows_Nqx1 = jnp.arange(Nq)[:, None]
  cols_1xNk = jnp.arange(Nk)[None, :]
  prior_NqxNk = jnp.zeros((Nq, Nk), jnp.float32)
  if prior_diagonal_n_blocks > 0:
    # Band |r - c| <= n // 2: n = 1 is the diagonal, n = 3 tridiagonal (n = 2 acts as 3).
    band = jnp.abs(rows_Nqx1 - cols_1xNk) <= prior_diagonal_n_blocks // 2
    prior_NqxNk = prior_NqxNk + PRIOR_BOOST * band
  if prior_first_n_blocks > 0:
    # The first n block rows and the first n block columns (the corner gets both).
    prior_NqxNk = prior_NqxNk + PRIOR_BOOST * (rows_Nqx1 < prior_first_n_blocks)
    prior_NqxNk = prior_NqxNk + PRIOR_BOOST * (cols_1xNk < prior_first_n_blocks)
  return scores + prior_NqxNk[None, None]


def select_blocks(scores_BxHxNqxNk: jax.Array, num_blocks: int) -> tuple[jax.Array, jax.Array]:
  """Global top-k of each (batch, head) over its Nq x Nk block grid.

  Args:
    scores_BxHxNqxNk: float32 selection scores (`selection_scores`).
    num_blocks: K, the number of tiles to select, 1 <= K <= Nq * Nk.

  Returns:
    `(tile_ids_BxHxK, high_res_BxHxNqxNk)`: the selected flat tile ids `r * Nk + c`
    as int32 sorted ascending, and the published "high-resolution mask"
    `scores >= min(selected scores)` (a threshold test, so exact ties at the
    threshold also mark unselected tiles: MRA-2 then drops them from both parts,
    as the published code does).
  """
  B, H, Nq, Nk = scores_BxHxNqxNk.shape
  scores = jax.lax.stop_gradient(scores_BxHxNqxNk)
  top_values_BxHxK, top_ids_BxHxK = jax.lax.top_k(scores.reshape(B, H, Nq * Nk), num_blocks)
  # The barrier keeps XLA:CPU from merging top-k with the threshold test below into a
  # full sort of the grid (20x slower at L=16384). It must wrap one output, not the
  # pair: a barrier on top-k's whole tuple crashes XLA's TopkDecomposer under pmap.
  threshold_BxH = jax.lax.optimization_barrier(top_values_BxHxK)[..., -1]
  high_res_BxHxNqxNk = scores >= threshold_BxH[..., None, None]
  tile_ids_BxHxK = jnp.sort(top_ids_BxHxK.astype(jnp.int32), axis=-1)
  return tile_ids_BxHxK, high_res_BxHxNqxNk
