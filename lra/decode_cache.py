"""The decoder's per-layer cache: what one attention keeps to decode a byte at a time.

`init(knobs, ...)` makes the cache of an attention from its knobs and `attend(knobs, cache,
q, k, v)` appends a chunk of T positions (a prompt, or one byte) and returns the chunk's
outputs, equal to float32 round-off to the causal attention over the whole sequence at
those positions:

* softmax and local: `KvCache`, the keys and values so far; query i reads the cached keys
  j <= i (softmax), i - window_size < j <= i (sliding local), or those of its own block up
  to i (block-local), through a mask over the whole cache. Each step reads the whole cache
  (O(L) per byte; a sliding window would need only window_size of it, but the cache stays
  one layout for both).
* mra2 and mra2_s: `mra_jax.decode`'s cache of keys, values and block summaries (O(L / 32 +
  budget) per byte).

Positions are the cache's `index`: the first chunk starts at 0.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mra_jax import attention as mra_attention
from mra_jax import decode as mra_decode
from mra_jax.attentions import local, softmax


class KvCache(NamedTuple):
  """Keys and values written so far (a pytree; zeros beyond `index`).

  Attributes:
    key: [B, L, H, D] float32 keys (rotary positions already applied).
    value: [B, L, H, D] float32 values.
    index: int32 scalar, the position the next token takes.
  """

  key: jax.Array
  value: jax.Array
  index: jax.Array


def init(knobs: Any, *, batch: int, max_length: int, num_heads: int, head_dim: int):
  """An empty cache for up to `max_length` positions of the causal attention `knobs`.

  Raises:
    ValueError: knobs of an attention without a causal cache, or not causal.
  """
  _check(knobs)
  if isinstance(knobs, mra_attention.MraConfig):
    return mra_decode.init_cache(batch, max_length, num_heads, head_dim, config=knobs)
  zeros = jnp.zeros((batch, max_length, num_heads, head_dim), jnp.float32)
  return KvCache(key=zeros, value=zeros, index=jnp.zeros((), jnp.int32))


def attend(knobs: Any, cache, q_BxTxHxD, k_BxTxHxD, v_BxTxHxD):
  """Writes the chunk's keys and values at `cache.index`; returns (outputs, cache).

  Args:
    knobs: the causal attention's knobs (`SoftmaxKnobs`, `LocalKnobs`, `MraConfig`).
    cache: from `init` or the previous call.
    q_BxTxHxD, k_BxTxHxD, v_BxTxHxD: the chunk's queries, keys and values.

  Returns:
    ([B, T, H, D] float32 outputs, the cache with the chunk written).
  """
  _check(knobs)
  if isinstance(knobs, mra_attention.MraConfig):
    return mra_decode.decode_step(cache, q_BxTxHxD, k_BxTxHxD, v_BxTxHxD, config=knobs)
  T = q_BxTxHxD.shape[1]
  start = cache.index
  at = (0, start, 0, 0)
  f32 = lambda x: x.astype(jnp.float32)
  key = jax.lax.dynamic_update_slice(cache.key, f32(k_BxTxHxD), at)
  value = jax.lax.dynamic_update_slice(cache.value, f32(v_BxTxHxD), at)
  q_pos_T = start + jnp.arange(T)
  k_pos_L = jnp.arange(key.shape[1])
  allowed_TxL = k_pos_L[None, :] <= q_pos_T[:, None]
  if isinstance(knobs, local.LocalKnobs):
    w = knobs.window_size
    if knobs.block_local:
      allowed_TxL &= (k_pos_L // w)[None, :] == (q_pos_T // w)[:, None]
    else:
      allowed_TxL &= q_pos_T[:, None] - k_pos_L[None, :] < w
  logits = jnp.einsum("bthd,blhd->bhtl", f32(q_BxTxHxD), key) / math.sqrt(key.shape[-1])
  p_BxHxTxL, _ = softmax.masked_softmax(logits, allowed_TxL[None, None])
  out = jnp.einsum("bhtl,blhd->bthd", p_BxHxTxL, value)
  return out, KvCache(key=key, value=value, index=start + T)


def _check(knobs: Any) -> None:
  if not isinstance(knobs, softmax.SoftmaxKnobs | local.LocalKnobs | mra_attention.MraConfig):
    raise ValueError(
      "decoding with a cache takes softmax, local, mra2 or mra2_s; got knobs of type "
      f"{type(knobs).__name__}"
    )
  if not knobs.is_causal:
    raise ValueError(f"decoding needs causal knobs (is_causal=True); got {knobs!r}")
