"""Dense O(L^2) oracles for tests and docs: exact softmax attention and dense MRA.

`softmax_attention` is the one explicit softmax formula every attention of the library
is checked against (with `allowed`, also on a sparse pattern).

`mra_attention_dense` writes MRA's approximation (the closed form of the paper's
multi-resolution weights) as one explicit mixed-resolution weight matrix: exact weights
`exp(s_qj)` on the selected tiles, the block weight `exp(z_rc)` spread over the real keys
of every other block pair, zero elsewhere. It shares pooling and selection with the fast
path (those are tested on their own) but none of the block-sparse machinery, which it
checks. Only for small L.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import jax
import jax.numpy as jnp

from mra_jax import attention, pooling, selection


def softmax_attention(query, key, value, mask=None, *, key_mask=None, allowed=None) -> jax.Array:
  """Exact masked softmax attention softmax(q k^T / sqrt(D)) v, float32 maths.

  Args:
    query: [B, Lq, H, D], any float dtype.
    key: [B, Lk, H, D].
    value: [B, Lk, H, Dv].
    mask: optional [B, Lq] bool or 0/1, True = real query; also the key mask when
      `key_mask` is None and Lq == Lk.
    key_mask: optional [B, Lk] bool or 0/1, True = real key.
    allowed: optional bool pattern [Lq, Lk], [H, Lq, Lk] or [B|1, H|1, Lq, Lk]: query i
      attends to key j only where it is True (a window, a per-head sparse pattern, ...).

  Returns:
    [B, Lq, H, Dv] in query's dtype. Padded queries, and queries without any allowed
    real key, output 0 (never NaN, also in the gradient).
  """
  B, Lq, _, D = query.shape
  Lk = key.shape[1]
  if key_mask is None and mask is not None and Lq == Lk:
    key_mask = mask
  q_valid = jnp.ones((B, Lq), bool) if mask is None else jnp.asarray(mask, bool)
  k_valid = jnp.ones((B, Lk), bool) if key_mask is None else jnp.asarray(key_mask, bool)
  ok_BxHxLqxLk = k_valid[:, None, None, :]
  if allowed is not None:
    allowed = jnp.asarray(allowed, bool)
    ok_BxHxLqxLk = ok_BxHxLqxLk & allowed.reshape((1,) * (4 - allowed.ndim) + allowed.shape)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  s = jnp.einsum("bqhd,bkhd->bhqk", f32(query), f32(key)) * D**-0.5
  s = jnp.where(ok_BxHxLqxLk, s, -jnp.inf)
  m = jnp.max(s, axis=-1, keepdims=True)
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  p = jnp.where(ok_BxHxLqxLk, jnp.exp(s - m), 0.0)
  v = jnp.where(k_valid[:, :, None, None], f32(value), 0.0)
  den = jnp.sum(p, -1)[..., None]
  out_BxHxLqxD = jnp.einsum("bhqk,bkhd->bhqd", p, v) / jnp.where(den > 0, den, 1.0)
  out = out_BxHxLqxD.swapaxes(1, 2)
  return jnp.where(q_valid[:, :, None, None], out, 0.0).astype(query.dtype)


def mra_attention_dense(query, key, value, mask=None, *, key_mask=None, **knobs) -> jax.Array:
  """MRA (same knobs as `mra_attention`) through a dense L x L weight matrix."""
  cfg = attention.MraConfig(**knobs)
  B, Lq, H, D = query.shape
  Lk = key.shape[1]
  if key_mask is None and mask is not None and Lq == Lk:
    key_mask = mask
  bs = cfg.block_size
  Lq_pad, Lk_pad = -(-Lq // bs) * bs, -(-Lk // bs) * bs
  Nq, Nk = Lq_pad // bs, Lk_pad // bs
  pad = lambda x, L: jnp.pad(
    jnp.asarray(x, jnp.float32).swapaxes(1, 2), ((0, 0), (0, 0), (0, L - x.shape[1]), (0, 0))
  )
  valid = lambda m, L0, L: jnp.pad(
    jnp.ones((B, L0), bool) if m is None else jnp.asarray(m, bool), ((0, 0), (0, L - L0))
  )
  q_valid, k_valid = valid(mask, Lq, Lq_pad), valid(key_mask, Lk, Lk_pad)
  q = jnp.where(q_valid[:, None, :, None], pad(query, Lq_pad), 0.0)
  k = jnp.where(k_valid[:, None, :, None], pad(key, Lk_pad), 0.0)
  v = jnp.where(k_valid[:, None, :, None], pad(value, Lk_pad), 0.0)

  count_q, count_k = pooling.block_counts(q_valid, bs), pooling.block_counts(k_valid, bs)
  z, row_max = selection.low_resolution_logits(
    pooling.block_means(q, q_valid, bs),
    pooling.block_means(k, k_valid, bs),
    count_q,
    count_k,
    D**-0.5,
  )
  scores = selection.selection_scores(
    z,
    row_max,
    prior_first_n_blocks=cfg.initial_prior_first_n_blocks,
    prior_diagonal_n_blocks=cfg.initial_prior_diagonal_n_blocks,
  )
  tile_ids, high_res = selection.select_blocks(scores, cfg.budget(Nq, Nk))
  selected = jnp.zeros((B, H, Nq * Nk), bool)
  selected = jax.vmap(jax.vmap(lambda s, i: s.at[i].set(True)))(selected, tile_ids)
  selected = selected.reshape(B, H, Nq, Nk)

  to_tokens = lambda blocks: jnp.repeat(jnp.repeat(blocks, bs, axis=2), bs, axis=3)
  key_real = k_valid[:, None, None, :]
  s = jnp.einsum("bhqd,bhkd->bhqk", q, k) * D**-0.5
  hi = to_tokens(selected) & key_real
  real_pair = (count_q[:, :, None] > 0) & (count_k[:, None, :] > 0)
  lo = (
    to_tokens(real_pair[:, None] & ~high_res) & key_real
    if cfg.approx_mode == "full"
    else jnp.zeros_like(hi)
  )
  z_tok = to_tokens(z)
  m_hi = jnp.max(jnp.where(hi, s, -jnp.inf), axis=-1)
  m_lo = jnp.repeat(jnp.max(jnp.where(real_pair[:, None], z, -jnp.inf), -1), bs, axis=2)
  m = m_hi if cfg.approx_mode == "sparse" else jnp.maximum(m_hi, m_lo)
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))[..., None]
  w_hi = jnp.where(hi, jnp.exp(s - m), 0.0)
  w_lo = jnp.where(lo, jnp.exp(z_tok - m), 0.0)
  # A low-resolution block contributes count * exp(z) * v_hat, v_hat = sum(v) / (count + eps).
  count_tok = jnp.repeat(count_k, bs, axis=1)
  v_lo = v * (count_tok / (count_tok + pooling.POOLING_EPS))[:, None, :, None]
  num = w_hi @ v + w_lo @ v_lo
  den = jnp.sum(w_hi, -1) + jnp.sum(w_lo, -1)
  out = num / (den + 1e-6)[..., None]
  out = jnp.where(q_valid[:, None, :, None], out, 0.0)
  return out[:, :, :Lq].swapaxes(1, 2).astype(query.dtype)
