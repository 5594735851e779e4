"""Causal MRA one token (or one chunk) at a time, from a cache of keys, values and summaries.

`init_cache` makes an `MraCache`; `decode_step(cache, q, k, v, config)` appends the chunk's
keys and values and returns the chunk's outputs, equal (to float32 round-off) to the causal
`mra_attention` call over the whole sequence at the same positions. Besides the keys and
values, the cache keeps what selection and the low-resolution term need: per key block the
running sums of keys and values and the token count, and per block row the sum of its queries
("previous_block" selection) or its first query ("first_query"). A step for a query in block
row r reads the Nk block summaries and the keys and values of row r's chosen blocks and its
own block: O(L / block_size + budget * block_size) per head, never the whole cache.

Every written position is a real token (no padding inside the cache). A chunk that starts at
position 0 is computed by the causal op itself (prefill); a chunk at a later position gathers
its queries' blocks, which costs chunk x budget x block_size keys of memory.
"""
# pylint: disable=invalid-name

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mra_jax import attention, causal, pooling, selection

_EPS = 1e-6  # the block-sparse op's normaliser eps (pallas_kernels.DEFAULT_EPS)


class MraCache(NamedTuple):
  """What causal MRA keeps between decode steps (a pytree; `index` is the next position).

  Attributes:
    key: [B, L, Hk, D] keys written so far (zeros beyond `index`), in the inputs' dtype.
    value: [B, L, Hk, D] values.
    key_sum: [B, N, Hk, D] float32 sum of each key block's keys.
    value_sum: [B, N, Hk, D] float32 sum of each key block's values.
    count: [B, N] float32 tokens written into each block.
    summary_source: [B, N, H, D] float32: each block's query sum ("previous_block") or its
      first query ("first_query").
    index: int32 scalar, the position the next token takes.
  """

  key: jax.Array
  value: jax.Array
  key_sum: jax.Array
  value_sum: jax.Array
  count: jax.Array
  summary_source: jax.Array
  index: jax.Array

  @property
  def max_length(self) -> int:
    return self.key.shape[1]


def init_cache(
  batch: int,
  max_length: int,
  num_heads: int,
  head_dim: int,
  *,
  num_kv_heads: int | None = None,
  dtype=jnp.float32,
  config: attention.MraConfig,
) -> MraCache:
  """An empty cache for up to `max_length` positions (padded to a block multiple inside).

  Args:
    batch: B.
    max_length: the most positions the cache takes.
    num_heads: H, query heads.
    head_dim: D.
    num_kv_heads: Hk, key/value heads (default H; must divide H).
    dtype: the keys' and values' dtype.
    config: the causal `MraConfig` the steps use (for its block size).

  Raises:
    ValueError: a non-causal config, bad sizes.
  """
  if not config.is_causal:
    raise ValueError("decoding needs a causal MraConfig; got is_causal=False")
  num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
  for name, value in (
    ("batch", batch),
    ("max_length", max_length),
    ("num_heads", num_heads),
    ("head_dim", head_dim),
    ("num_kv_heads", num_kv_heads),
  ):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive int; got {name}={value!r}")
  if num_heads % num_kv_heads:
    raise ValueError(
      f"num_kv_heads must divide num_heads; got num_heads={num_heads}, num_kv_heads={num_kv_heads}"
    )
  bs = config.block_size
  N = -(-max_length // bs)
  zeros = lambda *shape, dt=jnp.float32: jnp.zeros(shape, dt)
  return MraCache(
    key=zeros(batch, max_length, num_kv_heads, head_dim, dt=dtype),
    value=zeros(batch, max_length, num_kv_heads, head_dim, dt=dtype),
    key_sum=zeros(batch, N, num_kv_heads, head_dim),
    value_sum=zeros(batch, N, num_kv_heads, head_dim),
    count=zeros(batch, N),
    summary_source=zeros(batch, N, num_heads, head_dim),
    index=jnp.zeros((), jnp.int32),
  )


def _raise_past_the_end(start, length, max_length):
  raise ValueError(
    f"decode_step writes positions {int(start)}..{int(start) + length - 1} past the cache's "
    f"max_length={max_length}; make the cache longer (init_cache(max_length=...))"
  )


def _check_room(cache: MraCache, length: int) -> None:
  """A chunk must fit: an error now if the index is known, else when the step runs."""
  end_ok = cache.index + length <= cache.max_length
  if not isinstance(cache.index, jax.core.Tracer):
    if not bool(end_ok):
      _raise_past_the_end(cache.index, length, cache.max_length)
    return
  jax.lax.cond(
    end_ok,
    lambda i: None,
    lambda i: jax.debug.callback(_raise_past_the_end, i, length, cache.max_length),
    cache.index,
  )


def _write(cache: MraCache, q, k, v, config: attention.MraConfig) -> MraCache:
  """The cache with the chunk's keys, values and summaries added at `cache.index`."""
  B, T = q.shape[:2]
  bs = config.block_size
  start = cache.index
  positions = start + jnp.arange(T)
  blocks = positions // bs
  f32 = lambda x: x.astype(jnp.float32)
  at = (jnp.arange(B)[:, None], blocks[None, :])
  key_sum = cache.key_sum.at[at].add(f32(k))
  value_sum = cache.value_sum.at[at].add(f32(v))
  count = cache.count.at[:, blocks].add(1.0)
  if config.causal_selection == "previous_block":
    summary = cache.summary_source.at[at].add(f32(q))
  else:
    firsts = jnp.where((positions % bs == 0)[None, :, None, None], f32(q), 0.0)
    summary = cache.summary_source.at[at].add(firsts)
  index = (0, start, 0, 0)
  return MraCache(
    key=jax.lax.dynamic_update_slice(cache.key, k.astype(cache.key.dtype), index),
    value=jax.lax.dynamic_update_slice(cache.value, v.astype(cache.value.dtype), index),
    key_sum=key_sum,
    value_sum=value_sum,
    count=count,
    summary_source=summary,
    index=start + T,
  )


def decode_step(
  cache: MraCache,
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  *,
  config: attention.MraConfig,
) -> tuple[jax.Array, MraCache]:
  """Causal MRA for the next chunk of T positions: appends it to the cache, returns its output.

  Args:
    cache: from `init_cache` or the previous step.
    query: [B, T, H, D] the chunk's queries (T >= 1).
    key: [B, T, Hk, D] its keys.
    value: [B, T, Hk, D] its values.
    config: the causal `MraConfig` of the full call this reproduces.

  Returns:
    `(out_BxTxHxD, cache)`: the outputs in query's dtype, equal (float32 round-off) to
    `mra_attention(..., config=config)` over the whole sequence at these positions; and the
    cache with the chunk written.

  Raises:
    ValueError: shapes that do not match the cache, a non-causal config, or a chunk that
      does not fit in the cache (raised when the step runs, under `jit`).
  """
  if not config.is_causal:
    raise ValueError("decode_step needs a causal MraConfig; got is_causal=False")
  B, T, H, D = query.shape
  Hk = cache.key.shape[2]
  if key.shape != (B, T, Hk, D) or value.shape != key.shape:
    raise ValueError(
      f"key and value must be [B, T, Hk, D] = {(B, T, Hk, D)} for this cache and query; got "
      f"query.shape={query.shape}, key.shape={key.shape}, value.shape={value.shape}"
    )
  if cache.summary_source.shape[2:] != (H, D) or cache.key.shape[0] != B:
    raise ValueError(
      f"query [B, T, H, D] must match the cache's batch {cache.key.shape[0]}, heads "
      f"{cache.summary_source.shape[2]} and head_dim {D}; got query.shape={query.shape}"
    )
  _check_room(cache, T)
  new_cache = _write(cache, query, key, value, config)
  if not isinstance(cache.index, jax.core.Tracer) and int(cache.index) == 0:
    # A prefill from position 0 is the causal call itself over the chunk.
    out = attention.mra_attention(query, key, value, config=config)
    return out, new_cache
  return attend_cached(new_cache, query, config=config), new_cache


def attend_cached(cache: MraCache, q_BxTxHxD: jax.Array, *, config: attention.MraConfig):
  """Outputs of the last T positions of a cache that already holds them (`decode_step`
  without the write): positions cache.index - T .. cache.index - 1.

  Args:
    cache: a cache whose last T written positions are the queries'.
    q_BxTxHxD: their queries.
    config: the causal `MraConfig`.

  Returns:
    [B, T, H, D] in q's dtype.
  """
  B, T, H, D = q_BxTxHxD.shape
  start = cache.index - T
  Hk = cache.key.shape[2]
  G = H // Hk
  bs = config.block_size
  N = cache.count.shape[1]
  scale = D**-0.5
  positions = start + jnp.arange(T)
  rows = positions // bs
  q = q_BxTxHxD.astype(jnp.float32).reshape(B, T, Hk, G, D)
  k_hat = cache.key_sum / (cache.count[:, :, None, None] + pooling.POOLING_EPS)
  v_hat = cache.value_sum / (cache.count[:, :, None, None] + pooling.POOLING_EPS)
  if config.approx_mode == "sparse":
    k_hat = jax.lax.stop_gradient(k_hat)

  # Row r's query summary (previous block's mean query, or its first query).
  if config.causal_selection == "previous_block":
    prev = jnp.maximum(rows - 1, 0)
    sums = cache.summary_source[:, prev]  # [B, T, H, D]
    summary = sums / (cache.count[:, prev][:, :, None, None] + pooling.POOLING_EPS)
    summary = jnp.where((rows > 0)[None, :, None, None], summary, 0.0)
  else:
    summary = cache.summary_source[:, rows]
  summary = summary.reshape(B, T, Hk, G, D)
  summary_logits = jnp.einsum("btkgd,bnkd->bkgtn", summary, k_hat) * scale  # [B,Hk,G,T,N]

  # The row's selection, as `causal.selection_scores` / `select_tiles` make it.
  cols = jnp.arange(N)
  past = cols[None, :] < rows[:, None]  # [T, N]
  real = cache.count > 0  # [B, N]
  allowed = past[None, None, None] & real[:, None, None, None, :]
  row_max = jnp.max(jnp.where(allowed, summary_logits, -jnp.inf), axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  normalised = jnp.where(allowed, summary_logits - row_max, 0.0).sum(axis=2)  # [B,Hk,T,N]
  prior = jnp.zeros((T, N), jnp.float32)
  if config.initial_prior_first_n_blocks > 0:
    prior += selection.PRIOR_BOOST * (cols < config.initial_prior_first_n_blocks)[None, :]
  if config.initial_prior_diagonal_n_blocks > 0:
    band = rows[:, None] - cols[None, :] <= config.initial_prior_diagonal_n_blocks // 2
    prior += selection.PRIOR_BOOST * band
  scores = jnp.where(
    real[:, None, None, :], normalised + prior[None, None], causal.EMPTY_BLOCK_SCORE
  )
  scores = jnp.where(past[None, None], scores, -jnp.inf)
  per_row = config.row_budget(N)
  picks = min(per_row, N) - 1
  if picks > 0:
    _, chosen = jax.lax.top_k(jax.lax.stop_gradient(scores), picks)  # [B, Hk, T, P]
    kept = jnp.arange(picks)[None, :] < jnp.minimum(picks, rows)[:, None]  # [T, P]
  else:
    chosen = jnp.zeros((B, Hk, T, 0), jnp.int32)
    kept = jnp.zeros((T, 0), bool)
  one_hot = chosen[..., None] == cols[None, None, None, None]
  selected = jnp.any(one_hot & kept[None, None, :, :, None], axis=3)

  # Exact part: the chosen past blocks, whole, and the own block up to the query.
  blocks = jnp.concatenate([chosen, jnp.broadcast_to(rows[None, None, :, None], (B, Hk, T, 1))], -1)
  in_block = blocks[..., None] * bs + jnp.arange(bs)[None, None, None, None]  # [B,Hk,T,P+1,bs]
  key_at = jnp.swapaxes(cache.key, 1, 2)  # [B, Hk, L, D]
  value_at = jnp.swapaxes(cache.value, 1, 2)
  flat = in_block.reshape(B, Hk, -1)
  # The own block of a cache whose length is no block multiple reaches past its end: those
  # positions come after the query and are masked, but must be finite (clip, not NaN fill).
  gather = lambda x: jnp.take_along_axis(x, flat[..., None], axis=2, mode="clip").reshape(
    *in_block.shape, D
  )
  k_sel = gather(key_at).astype(jnp.float32)
  v_sel = gather(value_at).astype(jnp.float32)
  s = jnp.einsum("btkgd,bktpsd->bkgtps", q, k_sel) * scale  # [B,Hk,G,T,P+1,bs]
  usable = jnp.concatenate(
    [
      jnp.broadcast_to(kept[None, None, :, :, None], (B, Hk, T, picks, bs)),
      (in_block[..., -1:, :] <= positions[None, None, :, None, None]),
    ],
    axis=3,
  )
  s = jnp.where(usable[:, :, None], s, -jnp.inf)

  # Low resolution (MRA-2): the unselected real past blocks.
  if config.approx_mode == "full":
    low_res = allowed & ~selected[:, :, None]  # [B, Hk, G, T, N]
    if config.causal_low_resolution == "per_query":
      low_logits = jnp.einsum("btkgd,bnkd->bkgtn", q, k_hat) * scale
    else:
      low_logits = summary_logits
    low_logits = jnp.where(low_res, low_logits, -jnp.inf)
  else:
    low_logits = jnp.full((B, Hk, G, T, N), -jnp.inf, jnp.float32)

  m = jnp.maximum(jnp.max(s, axis=(-2, -1)), jnp.max(low_logits, axis=-1))
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  p = jnp.exp(s - m[..., None, None])
  w = cache.count[:, None, None, None, :] * jnp.exp(low_logits - m[..., None])
  norm = p.sum(axis=(-2, -1)) + w.sum(-1)
  acc = jnp.einsum("bkgtps,bktpsd->bkgtd", p, v_sel) + jnp.einsum("bkgtn,bnkd->bkgtd", w, v_hat)
  out = acc / (norm + _EPS)[..., None]  # [B, Hk, G, T, D]
  out = jnp.moveaxis(out, 3, 1).reshape(B, T, H, D)
  return out.astype(q_BxTxHxD.dtype)


def positions_read(config: attention.MraConfig, length: int) -> int:
  """Keys and values one decode step reads per head at context `length` (for the docs):
  the Nk block summaries, the chosen blocks and the own block."""
  bs = config.block_size
  N = -(-length // bs)
  return N + config.row_budget(N) * bs
