"""Causal MRA: a block selection and a low-resolution term that never read the future.

Bidirectional MRA reads the future three ways (docs/algorithm.md, "Causal"): its budget is
one top-k over the whole tile grid, so whether tile (r, c) is kept depends on later rows; its
tile scores use the mean of *all* the queries of block r, later ones included; and MRA-2's
low-resolution term, constant over a query block, uses that mean and the mean key of the
query's own block. Here, for query block r (queries r*bs .. r*bs+bs-1):

* **Budget per row.** Row r computes `per_row` tiles: the diagonal tile (r, r), always, with
  the in-tile mask key <= query (the block-sparse op's `causal=True`), and the
  `per_row - 1` best *past* key blocks c < r (all of them while r < per_row). No row's
  choice depends on another row.
* **Scores from the past only.** Tile (r, c) is ranked by `scale * s_r . k̂_c`, where k̂_c is
  the mean key of the complete past block c and s_r a query summary that every query of
  block r has seen: the mean query of block r - 1 ("previous_block") or the first query of
  block r ("first_query"). Scores are normalised per row and per query head (as the
  bidirectional scores), summed over the query heads of a key/value head (grouped-query
  attention shares one selection per group), and the priors add as there: the first n key
  blocks, and the n // 2 blocks before the diagonal. All-padding key blocks rank last.
* **Low resolution (MRA-2) over the strictly past, unselected blocks.** A key block c < r
  that row r does not compute enters as one term, `n_c exp(w - m) v̂_c`, with n_c its real
  tokens. Its logit w is per query, `scale * q_i . k̂_c` ("per_query": exact in causality,
  L x Nk logits per head, 1/bs of dense attention's), or the row's summary logit
  `scale * s_r . k̂_c` ("per_block": Nq x Nk per head, constant over the block as in
  bidirectional MRA).

Everything a query at position i reads (s_r, the past k̂_c, v̂_c, n_c, the keys of the chosen
blocks, the keys up to i of its own block) lies at positions <= i, so changing any input after
i changes no output up to i, nor its gradient. `mra_jax.decode` computes the same thing one
token (or chunk) at a time from a cache of these summaries.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mra_jax import pooling, selection

SELECTIONS = ("previous_block", "first_query")
LOW_RESOLUTIONS = ("per_query", "per_block")
# An all-padding past key block: ranked below every real block and above every disallowed
# (diagonal or future) one, which score -inf.
EMPTY_BLOCK_SCORE = -1e30
# Per-query low resolution works on chunks of query blocks whose logits take about this much.
_LOW_RES_CHUNK_BYTES = 8 * 2**20


def per_row_budget(per_row: int, num_blocks: int) -> int:
  """Tiles per query block row, the diagonal included, at most `num_blocks` (all of them)."""
  return max(1, min(per_row, num_blocks))


def query_summaries(
  q_BxHxLxD: jax.Array, q_valid_BxL: jax.Array, block_size: int, rule: str
) -> jax.Array:
  """The query summary s_r of every block row, from positions before its queries (float32).

  Args:
    q_BxHxLxD: queries; L a multiple of `block_size`.
    q_valid_BxL: bool, True for real queries.
    block_size: tokens per block.
    rule: "previous_block" (mean of block r - 1's real queries; 0 for r = 0, which has no
      past block) or "first_query" (query r * block_size; 0 if it is padding).

  Returns:
    float32 [B, H, N, D].
  """
  if rule == "previous_block":
    means = pooling.block_means(q_BxHxLxD, q_valid_BxL, block_size)
    return jnp.pad(means[:, :, :-1], ((0, 0), (0, 0), (1, 0), (0, 0)))
  if rule == "first_query":
    first = q_BxHxLxD[:, :, ::block_size].astype(jnp.float32)
    return jnp.where(q_valid_BxL[:, None, ::block_size, None], first, 0.0)
  raise ValueError(f"causal_selection must be one of {SELECTIONS}; got {rule!r}")


def grouped_logits(a_BxHqxMxD: jax.Array, k_hat_BxHkxNxD: jax.Array, scale: float) -> jax.Array:
  """`scale * a . k̂` of every query head against its key/value head: [B, Hk, G, M, N]."""
  B, Hq, M, D = a_BxHqxMxD.shape
  Hk = k_hat_BxHkxNxD.shape[1]
  a = a_BxHqxMxD.reshape(B, Hk, Hq // Hk, M, D)
  return jnp.einsum("bhgmd,bhnd->bhgmn", a, k_hat_BxHkxNxD) * scale


def past_real_blocks(count_k_BxN: jax.Array) -> jax.Array:
  """[B, 1, N, N] bool: key block c is strictly before row r and holds a real token."""
  N = count_k_BxN.shape[1]
  past = np.arange(N)[None, :] < np.arange(N)[:, None]
  return (past[None] & (count_k_BxN[:, None, :] > 0))[:, None]


def selection_scores(
  logits_BxHkxGxNxN: jax.Array,
  count_k_BxN: jax.Array,
  *,
  prior_first_n_blocks: int,
  prior_diagonal_n_blocks: int,
) -> jax.Array:
  """What each row's top-k ranks: [B, Hk, N, N] float32, -inf on and after the diagonal.

  Per query head, the logits of the real past blocks minus their row maximum; summed over
  the group's query heads; plus the priors (the first n key blocks, the n // 2 blocks before
  the diagonal). All-padding past blocks score `EMPTY_BLOCK_SCORE`.
  """
  N = logits_BxHkxGxNxN.shape[-1]
  allowed = past_real_blocks(count_k_BxN)[:, :, None]  # [B, 1, 1, N, N]
  row_max = jnp.max(jnp.where(allowed, logits_BxHkxGxNxN, -jnp.inf), axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  normalised = jnp.where(allowed, logits_BxHkxGxNxN - row_max, 0.0).sum(axis=2)
  rows, cols = np.arange(N)[:, None], np.arange(N)[None, :]
  prior = np.zeros((N, N), np.float32)
  if prior_first_n_blocks > 0:
    prior += selection.PRIOR_BOOST * (cols < prior_first_n_blocks)
  if prior_diagonal_n_blocks > 0:
    prior += selection.PRIOR_BOOST * (rows - cols <= prior_diagonal_n_blocks // 2)
  past = cols < rows
  real = past_real_blocks(count_k_BxN)[:, 0]  # [B, N, N]
  scores = jnp.where(real[:, None], normalised + prior[None, None], EMPTY_BLOCK_SCORE)
  return jnp.where(past[None, None], scores, -jnp.inf)


def select_tiles(scores_BxHkxNxN: jax.Array, per_row: int) -> tuple[jax.Array, jax.Array]:
  """Each row's diagonal tile and its `per_row - 1` best past tiles.

  Args:
    scores_BxHkxNxN: `selection_scores`.
    per_row: tiles per row, the diagonal included (rows with fewer past blocks take all).

  Returns:
    `(tile_ids_BxHkxK, selected_BxHkxNxN)`: sorted flat ids `r * N + c`, K = N + sum over
    rows of min(per_row - 1, r) (static), and the selected pairs as a bool grid (the
    diagonal included).
  """
  B, Hk, N, _ = scores_BxHkxNxN.shape
  picks = min(per_row, N) - 1
  diagonal = np.arange(N) * (N + 1)
  eye = np.eye(N, dtype=bool)
  if picks <= 0:
    ids = jnp.broadcast_to(jnp.asarray(diagonal, jnp.int32), (B, Hk, N))
    return ids, jnp.broadcast_to(eye, (B, Hk, N, N))
  scores = jax.lax.stop_gradient(scores_BxHkxNxN)
  _, cols_BxHkxNxP = jax.lax.top_k(scores, picks)
  # Row r keeps its first min(picks, r) picks: its past blocks rank above every disallowed
  # one, and an all-padding past block, if picked, just contributes nothing.
  rows_K, slots_K = zip(*[(r, j) for r in range(N) for j in range(min(picks, r))])
  rows_K, slots_K = np.asarray(rows_K), np.asarray(slots_K)
  cols_BxHkxK = cols_BxHkxNxP[:, :, rows_K, slots_K].astype(jnp.int32)
  ids = jnp.concatenate(
    [
      jnp.broadcast_to(jnp.asarray(diagonal, jnp.int32), (B, Hk, N)),
      rows_K[None, None] * N + cols_BxHkxK,
    ],
    axis=-1,
  )
  kept_NxP = np.arange(picks)[None, :] < np.minimum(picks, np.arange(N))[:, None]
  one_hot = cols_BxHkxNxP[..., None] == jnp.arange(N)[None, None, None, None]
  selected = jnp.any(one_hot & kept_NxP[None, None, :, :, None], axis=3) | eye[None, None]
  return jnp.sort(ids, axis=-1), selected


def _state(logits, allowed, counts, v_hat):
  """(m0, l0, acc0) of the low-resolution terms `counts * exp(logits)` with values `v_hat`.

  logits [..., M, N] float32, allowed broadcastable to it, counts [..., 1|M, N], v_hat
  [..., N, D]. The maximum carries no gradient; rows without a term get m0 = -inf and zeros.
  """
  m0 = jax.lax.stop_gradient(jnp.max(jnp.where(allowed, logits, -jnp.inf), axis=-1))
  safe = jnp.where(jnp.isfinite(m0), m0, 0.0)
  weights = jnp.where(allowed, counts * jnp.exp(logits - safe[..., None]), 0.0)
  return m0, weights.sum(-1), jnp.einsum("...mn,...nd->...md", weights, v_hat)


def low_resolution_per_block(
  summary_logits_BxHkxGxNxN: jax.Array,
  low_res_BxHkxNxN: jax.Array,
  count_k_BxN: jax.Array,
  v_hat_BxHkxNxD: jax.Array,
  block_size: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """MRA-2's term from the row summaries' logits, constant over a block: per query head.

  Returns:
    `(m0_BxHqxL, l0_BxHqxL, acc0_BxHqxLxD)`, float32, each block's value repeated over its
    queries.
  """
  B, Hk, G, N, _ = summary_logits_BxHkxGxNxN.shape
  m0, l0, acc0 = _state(
    summary_logits_BxHkxGxNxN,
    low_res_BxHkxNxN[:, :, None],
    count_k_BxN[:, None, None, None, :],
    v_hat_BxHkxNxD[:, :, None],
  )
  per_query = lambda x: jnp.repeat(x.reshape(B, Hk * G, N, *x.shape[4:]), block_size, axis=2)
  return per_query(m0), per_query(l0), per_query(acc0)


def low_resolution_per_query(
  q_BxHqxLxD: jax.Array,
  k_hat_BxHkxNxD: jax.Array,
  v_hat_BxHkxNxD: jax.Array,
  low_res_BxHkxNxN: jax.Array,
  count_k_BxN: jax.Array,
  block_size: int,
  scale: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """MRA-2's term with each query's own logits `scale * q_i . k̂_c` (float32).

  Computed over chunks of query blocks, each rematerialised in the backward pass, so memory
  stays O(chunk x N) per head rather than O(L x N).

  Returns:
    `(m0_BxHqxL, l0_BxHqxL, acc0_BxHqxLxD)`.
  """
  B, Hq, L, D = q_BxHqxLxD.shape
  Hk, N = k_hat_BxHkxNxD.shape[1], k_hat_BxHkxNxD.shape[2]
  G = Hq // Hk
  rows = max(1, min(N, _LOW_RES_CHUNK_BYTES // max(1, B * Hq * block_size * N * 4)))
  chunks = -(-N // rows)
  pad = chunks * rows - N
  q = q_BxHqxLxD.astype(jnp.float32).reshape(B, Hk, G, N, block_size, D)
  q = jnp.pad(q, ((0, 0),) * 3 + ((0, pad), (0, 0), (0, 0)))
  allowed = jnp.pad(low_res_BxHkxNxN, ((0, 0), (0, 0), (0, pad), (0, 0)))
  q_chunks = jnp.moveaxis(q.reshape(B, Hk, G, chunks, rows, block_size, D), 3, 0)
  allowed_chunks = jnp.moveaxis(allowed.reshape(B, Hk, chunks, rows, N), 2, 0)
  counts = count_k_BxN[:, None, None, None, None, :]

  @jax.checkpoint
  def one_chunk(q_c, allowed_c):  # [B, Hk, G, R, bs, D], [B, Hk, R, N]
    logits = jnp.einsum("bhgrsd,bhnd->bhgrsn", q_c, k_hat_BxHkxNxD) * scale
    return _state(
      logits, allowed_c[:, :, None, :, None, :], counts, v_hat_BxHkxNxD[:, :, None, None]
    )

  m0, l0, acc0 = jax.lax.map(lambda xs: one_chunk(*xs), (q_chunks, allowed_chunks))
  flat = lambda x: jnp.moveaxis(x, 0, 3).reshape(B, Hq, chunks * rows * block_size, *x.shape[6:])
  return tuple(flat(x)[:, :, :L] for x in (m0, l0, acc0))
