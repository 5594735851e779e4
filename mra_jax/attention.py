"""`mra_attention`: MRA-2 and MRA-2-s (Zeng et al., ICML 2022), any length, any platform.

The computation follows the published `mra2_attention` step by step:
block pooling with token counts -> low-resolution logits -> row-normalised scores
plus priors -> global top-k tiles -> exact attention on the selected 32x32 tiles,
with (MRA-2) the low-resolution term for the remaining block pairs. The two parts
share one softmax: the low-resolution term is the initial online-softmax state of the
block-sparse attention in `pallas_kernels.block_sparse_attention`, one of whose
implementations (`impl`) then adds the selected tiles. Nothing of size L x L is ever built.

Two deliberate differences from the published code, both invisible at float32
round-off on valid inputs (the golden parity tests hold us to 1e-6):
- the exponent reference of each query is the maximum over *real* keys and block
  pairs, not one that may come from a padded key (the published code can then
  underflow to 0 for a query whose real logits are all below about -87);
- the per-query maximum is exact, not truncated to steps of 1e-3 as the CUDA
  `index_max` does.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

import pallas_kernels
from mra_jax import causal, checks, knobs, pooling, selection
from mra_jax.checks import check_int

APPROX_MODES = ("full", "sparse")
# The block-sparse op's implementation names, and "auto".
IMPLS = ("auto", *pallas_kernels.IMPLEMENTATIONS)


@dataclasses.dataclass(frozen=True)
class MraConfig:
  """MRA's knobs, validated once (names as in the published code and the HF port).

  Attributes:
    block_size: tokens per block, a power of two (32 is the published setting).
    block_per_row: selection budget per query block row; the total budget is
      `Nq * block_per_row` tiles per (batch, head), from the runtime length.
    num_blocks: an explicit total budget (overrides `block_per_row`), capped at Nq * Nk.
    approx_mode: "full" = MRA-2 (high + low resolution), "sparse" = MRA-2-s.
    initial_prior_first_n_blocks: always select the first n block rows and columns.
    initial_prior_diagonal_n_blocks: always select a diagonal band of width n (odd).
    impl: the implementation of the block-sparse part (`pallas_kernels.block_sparse_attention`):
      "auto" ("pallas_triton" on GPU, "pallas_mosaic_tpu" on TPU, "xla_chunked"
      elsewhere), "reference" (one shot of pure jnp, memory grows with the selected
      tiles: for tests), "xla_chunked" (chunked pure jnp, O(L) memory: the CPU path),
      "pallas_triton" (Triton kernels, block_size 32 or 64) or "pallas_mosaic_tpu"
      (Mosaic TPU kernels, block_size 32, 64 or 128). A Pallas implementation runs in
      interpret mode where the program is lowered for another platform than its device;
      "auto" follows the platform of the inputs' devices (or the mesh in sight).
    precision: float32 dot precision of the block-sparse kernels, for impls that take one
      ("pallas_triton", and "auto" where it resolves to it): None (their default, "bf16x3")
      or one of `pallas_kernels.F32_PRECISIONS`. Half-precision inputs ignore it; an impl
      that takes no precision refuses a value.
    is_causal: causal attention: the output at position i depends on positions <= i only,
      through values, gradients, selection and the low-resolution term (docs/algorithm.md,
      "Causal"). The budget is then per query block row: `block_per_row` tiles, the diagonal
      included (from `num_blocks`: ceil(num_blocks / Nq)).
    causal_selection: causal only: the query summary that ranks row r's past key blocks,
      "previous_block" (mean query of block r - 1) or "first_query" (query r * block_size).
    causal_low_resolution: causal MRA-2 only: the low-resolution logit of an unselected past
      block, "per_query" (each query's own, q_i . k̂_c) or "per_block" (the row summary's,
      constant over the block).
  """

  block_size: int = 32
  block_per_row: int = 8
  num_blocks: int | None = None
  approx_mode: str = "full"
  initial_prior_first_n_blocks: int = 0
  initial_prior_diagonal_n_blocks: int = 0
  impl: str = "auto"
  precision: str | None = None
  is_causal: bool = False
  causal_selection: str = "previous_block"
  causal_low_resolution: str = "per_query"

  def __post_init__(self):
    check_int("block_size", self.block_size, minimum=2)
    if self.block_size & (self.block_size - 1):
      raise ValueError(f"block_size must be a power of two; got block_size={self.block_size!r}")
    check_int("block_per_row", self.block_per_row, minimum=1)
    if self.num_blocks is not None:
      check_int("num_blocks", self.num_blocks, minimum=1)
    if self.approx_mode not in APPROX_MODES:
      raise ValueError(
        f"approx_mode must be one of {APPROX_MODES}; got approx_mode={self.approx_mode!r}"
      )
    check_int("initial_prior_first_n_blocks", self.initial_prior_first_n_blocks, minimum=0)
    check_int("initial_prior_diagonal_n_blocks", self.initial_prior_diagonal_n_blocks, minimum=0)
    if self.impl not in IMPLS:
      raise ValueError(f"impl must be one of {IMPLS}; got impl={self.impl!r}")
    if self.precision is not None and self.precision not in pallas_kernels.F32_PRECISIONS:
      raise ValueError(
        f"precision must be None or one of {pallas_kernels.F32_PRECISIONS}; "
        f"got precision={self.precision!r}"
      )
    if not isinstance(self.is_causal, bool):
      raise ValueError(f"is_causal must be a bool; got is_causal={self.is_causal!r}")
    checks.check_choice("causal_selection", self.causal_selection, causal.SELECTIONS)
    checks.check_choice("causal_low_resolution", self.causal_low_resolution, causal.LOW_RESOLUTIONS)

  def budget(self, num_query_blocks: int, num_key_blocks: int) -> int:
    """Tiles selected per (batch, head) for a runtime block grid (bidirectional)."""
    wanted = (
      self.num_blocks if self.num_blocks is not None else num_query_blocks * self.block_per_row
    )
    return min(wanted, num_query_blocks * num_key_blocks)

  def row_budget(self, num_blocks: int) -> int:
    """Tiles per query block row, the diagonal included (causal), for N blocks a side."""
    per_row = self.block_per_row if self.num_blocks is None else -(-self.num_blocks // num_blocks)
    return causal.per_row_budget(per_row, num_blocks)


@knobs.takes_knobs(MraConfig, param="config")
def mra_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  mask: jax.Array | None = None,
  *,
  key_mask: jax.Array | None = None,
  config: MraConfig,
) -> jax.Array:
  """Multi-resolution attention: MRA-2 (`approx_mode="full"`) or MRA-2-s (`"sparse"`).

  The knobs are `MraConfig`'s fields, given as keywords (`block_per_row=4`), as a config
  (`config=MraConfig(...)`), or both (the keywords replace the config's values).

  Args:
    query: [B, Lq, H, D] float32, bfloat16 or float16.
    key: [B, Lk, Hk, D], same dtype family as `query`; Hk divides H (grouped-query
      attention: query head h reads key/value head h // (H // Hk), and a group's heads
      share one tile selection).
    value: [B, Lk, Hk, D].
    mask: optional [B, Lq] bool or 0/1 padding mask of the queries, True = real
      token. For self-attention (Lq == Lk) it also masks the keys unless
      `key_mask` is given.
    key_mask: optional [B, Lk] padding mask of the keys (cross-attention).
    config: the knobs (default `MraConfig()`): block_size, block_per_row, num_blocks,
      approx_mode, initial_prior_first_n_blocks, initial_prior_diagonal_n_blocks, impl,
      precision, is_causal, causal_selection, causal_low_resolution; see `MraConfig`.

  Returns:
    [B, Lq, H, D] in `query`'s dtype (statistics are float32 inside). Padded queries
    get 0; padded keys get no weight; a query without any real key gets 0.

  Raises:
    ValueError: wrong ranks or shapes, mismatched B/H/D, an unknown or bad knob, a bad mask
      shape, is_causal with different query and key lengths.
  """
  _check_inputs(query, key, value, mask, key_mask, config.is_causal)
  B, Lq, _H, _D = query.shape
  Lk = key.shape[1]
  if key_mask is None and mask is not None and Lq == Lk:
    key_mask = mask
  q_valid_BxLq = _as_valid(mask, (B, Lq))
  k_valid_BxLk = _as_valid(key_mask, (B, Lk))

  bs = config.block_size
  Lq_pad, Lk_pad = -(-Lq // bs) * bs, -(-Lk // bs) * bs
  to_heads_first = lambda x, L_pad: jnp.pad(
    jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (0, L_pad - x.shape[1]), (0, 0))
  )
  q_BxHxLxD = to_heads_first(query, Lq_pad)
  k_BxHxLxD = to_heads_first(key, Lk_pad)
  v_BxHxLxD = to_heads_first(value, Lk_pad)
  q_valid = jnp.pad(q_valid_BxLq, ((0, 0), (0, Lq_pad - Lq)))
  k_valid = jnp.pad(k_valid_BxLk, ((0, 0), (0, Lk_pad - Lk)))

  out_BxHxLxD = _mra_heads_first(q_BxHxLxD, k_BxHxLxD, v_BxHxLxD, q_valid, k_valid, config)
  return jnp.swapaxes(out_BxHxLxD[:, :, :Lq], 1, 2).astype(query.dtype)


def _mra_heads_first(
  q_BxHqxLqxD, k_BxHkxLkxD, v_BxHkxLkxD, q_valid_BxLq, k_valid_BxLk, cfg: MraConfig
) -> jax.Array:
  """MRA on block-aligned [B, H, L, D] inputs with explicit validity masks (float32 out).

  Grouped-query attention: k and v may have Hk heads dividing q's Hq; query head h reads
  key/value head h // (Hq // Hk), and the heads of a group share one tile selection.
  """
  B, Hq, Lq, D = q_BxHqxLqxD.shape
  bs = cfg.block_size
  scale = D**-0.5
  # Padded positions may hold anything (NaN included) and must change nothing.
  q_BxHqxLqxD = jnp.where(q_valid_BxLq[:, None, :, None], q_BxHqxLqxD, 0)
  k_BxHkxLkxD = jnp.where(k_valid_BxLk[:, None, :, None], k_BxHkxLkxD, 0)
  v_BxHkxLkxD = jnp.where(k_valid_BxLk[:, None, :, None], v_BxHkxLkxD, 0)

  count_k_BxNk = pooling.block_counts(k_valid_BxLk, bs)
  k_hat = pooling.block_means(k_BxHkxLkxD, k_valid_BxLk, bs)
  v_hat = pooling.block_means(v_BxHkxLkxD, k_valid_BxLk, bs) if cfg.approx_mode == "full" else None
  if cfg.is_causal:
    tile_ids, (m0, l0, acc0) = _causal_tiles_and_state(
      q_BxHqxLqxD, q_valid_BxLq, k_hat, v_hat, count_k_BxNk, cfg, scale
    )
  else:
    tile_ids, (m0, l0, acc0) = _tiles_and_state(
      q_BxHqxLqxD, q_valid_BxLq, k_hat, v_hat, count_k_BxNk, cfg, scale
    )
  if m0 is None:
    m0 = jnp.full((B, Hq, Lq), -jnp.inf, jnp.float32)
    l0 = jnp.zeros((B, Hq, Lq), jnp.float32)
    acc0 = jnp.zeros((B, Hq, Lq, D), jnp.float32)
  args = (q_BxHqxLqxD, k_BxHkxLkxD, v_BxHkxLkxD, tile_ids, k_valid_BxLk, m0, l0, acc0)
  out, _ = pallas_kernels.block_sparse_attention(
    *args,
    block_size=bs,
    scale=scale,
    causal=cfg.is_causal,
    implementation=cfg.impl,
    precision=cfg.precision,
  )
  return jnp.where(q_valid_BxLq[:, None, :, None], out.astype(jnp.float32), 0.0)


def _tiles_and_state(q_BxHqxLqxD, q_valid_BxLq, k_hat, v_hat, count_k_BxNk, cfg, scale):
  """Bidirectional MRA: the global top-k tiles per (batch, key/value head), and (MRA-2) the
  low-resolution state per query head (None for MRA-2-s)."""
  B, Hq, Lq, _ = q_BxHqxLqxD.shape
  Hk = k_hat.shape[1]
  G = Hq // Hk
  bs = cfg.block_size
  Nq, Nk = Lq // bs, k_hat.shape[2]
  count_q_BxNq = pooling.block_counts(q_valid_BxLq, bs)
  q_hat = pooling.block_means(q_BxHqxLqxD, q_valid_BxLq, bs)
  if cfg.approx_mode == "sparse":
    # MRA-2-s uses the low resolution only to choose tiles: no gradient flows there.
    q_hat, k_hat = jax.lax.stop_gradient(q_hat), jax.lax.stop_gradient(k_hat)
  per_query_head = lambda x: jnp.repeat(x, G, axis=1) if G > 1 else x
  logits_BxHqxNqxNk, row_max_BxHqxNq = selection.low_resolution_logits(
    q_hat, per_query_head(k_hat), count_q_BxNq, count_k_BxNk, scale
  )
  scores = selection.selection_scores(
    logits_BxHqxNqxNk,
    row_max_BxHqxNq,
    prior_first_n_blocks=cfg.initial_prior_first_n_blocks,
    prior_diagonal_n_blocks=cfg.initial_prior_diagonal_n_blocks,
  )
  if G > 1:  # One selection per group: the sum of its query heads' scores.
    scores = scores.reshape(B, Hk, G, Nq, Nk).sum(axis=2)
  tile_ids_BxHkxK, high_res_BxHkxNqxNk = selection.select_blocks(scores, cfg.budget(Nq, Nk))
  if cfg.approx_mode != "full":
    return tile_ids_BxHkxK, (None, None, None)
  m0, l0, acc0 = _low_resolution_state(
    logits_BxHqxNqxNk,
    per_query_head(high_res_BxHkxNqxNk),
    count_q_BxNq,
    count_k_BxNk,
    per_query_head(v_hat),
  )
  per_query = lambda x: jnp.repeat(x, bs, axis=2)
  return tile_ids_BxHkxK, (per_query(m0), per_query(l0), per_query(acc0))


def _causal_tiles_and_state(q_BxHqxLxD, q_valid_BxL, k_hat, v_hat, count_k_BxN, cfg, scale):
  """Causal MRA (`mra_jax.causal`): each row's diagonal and best past tiles per (batch,
  key/value head), and (MRA-2) the low-resolution state of the unselected past blocks."""
  bs = cfg.block_size
  N = q_BxHqxLxD.shape[2] // bs
  summaries = causal.query_summaries(q_BxHqxLxD, q_valid_BxL, bs, cfg.causal_selection)
  if cfg.approx_mode == "sparse":
    summaries, k_hat = jax.lax.stop_gradient(summaries), jax.lax.stop_gradient(k_hat)
  summary_logits = causal.grouped_logits(summaries, k_hat, scale)
  scores = causal.selection_scores(
    summary_logits,
    count_k_BxN,
    prior_first_n_blocks=cfg.initial_prior_first_n_blocks,
    prior_diagonal_n_blocks=cfg.initial_prior_diagonal_n_blocks,
  )
  tile_ids, selected = causal.select_tiles(scores, cfg.row_budget(N))
  if cfg.approx_mode != "full":
    return tile_ids, (None, None, None)
  low_res = causal.past_real_blocks(count_k_BxN) & ~selected
  if cfg.causal_low_resolution == "per_block":
    return tile_ids, causal.low_resolution_per_block(
      summary_logits, low_res, count_k_BxN, v_hat, bs
    )
  return tile_ids, causal.low_resolution_per_query(
    q_BxHqxLxD, k_hat, v_hat, low_res, count_k_BxN, bs, scale
  )


def _low_resolution_state(
  logits_BxHxNqxNk, high_res_BxHxNqxNk, count_q_BxNq, count_k_BxNk, v_hat_BxHxNkxD
):
  """MRA-2's low-resolution term as an online-softmax state per query block.

  Each unselected block pair (r, c) contributes `count_c * exp(z_rc)` with value
  `v_hat_c`: the exponential of the pair's average logit z_rc, times its key count, stands
  in for the sum over its tokens. The state is kept on the scale of m0_r = max_c z_rc over pairs with real tokens on both sides (the selected
  ones included, as the published `rmax`), so no term overflows.
  """
  real_pair = (count_q_BxNq[:, :, None] > 0) & (count_k_BxNk[:, None, :] > 0)
  real_pair = real_pair[:, None]
  m0_BxHxNq = jnp.max(jnp.where(real_pair, logits_BxHxNqxNk, -jnp.inf), axis=-1)
  m0_BxHxNq = jax.lax.stop_gradient(m0_BxHxNq)
  safe_m0 = jnp.where(jnp.isfinite(m0_BxHxNq), m0_BxHxNq, 0.0)
  low_res_pair = real_pair & ~high_res_BxHxNqxNk
  weights = count_k_BxNk[:, None, None, :] * jnp.exp(
    jnp.where(low_res_pair, logits_BxHxNqxNk - safe_m0[..., None], -jnp.inf)
  )
  l0_BxHxNq = jnp.sum(weights, axis=-1)
  acc0_BxHxNqxD = jnp.einsum("bhqk,bhkd->bhqd", weights, v_hat_BxHxNkxD)
  return m0_BxHxNq, l0_BxHxNq, acc0_BxHxNqxD


def _as_valid(mask, shape) -> jax.Array:
  if mask is None:
    return jnp.ones(shape, bool)
  return jnp.asarray(mask).astype(bool)


def _check_inputs(query, key, value, mask, key_mask, is_causal: bool):
  """Shape and dtype checks at the public boundary (ValueError naming the argument)."""
  for name, x in (("query", query), ("key", key), ("value", value)):
    if getattr(x, "ndim", None) != 4:
      raise ValueError(
        f"{name} must be [batch, length, heads, head_dim]; got "
        f"{name}.shape={getattr(x, 'shape', None)}"
      )
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"{name} must be a float array; got {name}.dtype={x.dtype}")
  B, Lq, H, D = query.shape
  if key.shape[0] != B or key.shape[3] != D or H % key.shape[2]:
    raise ValueError(
      f"key must match query in batch and head_dim, with a number of heads that divides "
      f"query's (grouped-query attention); got query.shape={query.shape}, key.shape={key.shape}"
    )
  if value.shape != key.shape:
    raise ValueError(
      f"value must have key's shape; got key.shape={key.shape}, value.shape={value.shape}"
    )
  if Lq == 0 or key.shape[1] == 0:
    raise ValueError(
      f"lengths must be positive; got query.shape={query.shape}, key.shape={key.shape}"
    )
  if mask is not None and tuple(jnp.shape(mask)) != (B, Lq):
    raise ValueError(
      f"mask must be [batch, query_length] = {(B, Lq)}; got mask.shape={tuple(jnp.shape(mask))}"
    )
  if is_causal and Lq != key.shape[1]:
    raise ValueError(
      "is_causal=True needs as many queries as keys (self-attention); got "
      f"query.shape={query.shape}, key.shape={key.shape}"
    )
  if key_mask is not None and tuple(jnp.shape(key_mask)) != (B, key.shape[1]):
    raise ValueError(
      f"key_mask must be [batch, key_length] = {(B, key.shape[1])}; got "
      f"key_mask.shape={tuple(jnp.shape(key_mask))}"
    )
