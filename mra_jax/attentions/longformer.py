"""Longformer attention (Beltagy et al., 2020): a sliding window plus global tokens.

Query i attends to keys j with |i - j| <= window_size // 2 (HF `attention_window`
convention) and to the first `num_global_tokens` positions; those global positions
attend to every key. The window is computed in chunks (O(L * window)), the global
rows and columns as thin [G, L] / [L, G] products; no L x L matrix is built.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from mra_jax import checks
from mra_jax.attentions import local, softmax, working_layout
from mra_jax.knobs import takes_knobs


@dataclasses.dataclass(frozen=True)
class LongformerKnobs:
  """Longformer's knobs (the MRA paper's LRA config: HF LongformerSelfAttention).

  Attributes:
    window_size: window width in tokens, >= 1: query i attends to keys j with
      |i - j| <= window_size // 2 (HF's `attention_window`; 64 in the MRA paper's config),
      clipped to L.
    num_global_tokens: the first that many positions are global, >= 0 (1 in the MRA
      paper's config: the first token); clipped to L, and 0 reduces to local attention.
  """

  window_size: int = 64
  num_global_tokens: int = 1

  def __post_init__(self):
    checks.check_int("window_size", self.window_size, minimum=1)
    checks.check_int("num_global_tokens", self.num_global_tokens, minimum=0)


@takes_knobs(LongformerKnobs, param="knobs")
def longformer_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  mask: jax.Array | None = None,
  *,
  knobs: LongformerKnobs,
) -> jax.Array:
  """Sliding-window attention with the first `num_global_tokens` tokens global.

  One softmax per query spans its window keys and the global keys; a global key
  inside the window is counted once. Global queries attend to all real keys.
  Global tokens reuse the ordinary q/k/v (HF Longformer has separate global
  projections; here projections belong to the caller).

  Args:
    query: [B, L, H, D] float32 / bfloat16 / float16.
    key: [B, L, H, D], same shape as query.
    value: [B, L, H, Dv].
    mask: optional [B, L] bool or 0/1, True = real token.
    knobs: `LongformerKnobs` (or its fields as keywords: window_size, num_global_tokens).
      A padded position stays padding even if it is in the global range.

  Returns:
    [B, L, H, Dv] in query's dtype; padded query positions are 0.

  Raises:
    ValueError: bad shapes or knobs.
  """
  q, k, v, m = working_layout.prepare(query, key, value, mask)
  b, h, length, d = q.shape
  g = min(knobs.num_global_tokens, length)
  reach = min(knobs.window_size // 2, length)
  if g == 0:
    o = local.sliding_window_attention(q, k, v, m, left=reach, right=reach)
    return working_layout.finish(o, m, query.dtype)

  chunk = max(reach, 1)
  qp, kp, vp = (working_layout.pad_axis(x, chunk, axis=2) for x in (q, k, v))
  mp = working_layout.pad_axis(m, chunk, axis=1)
  n = qp.shape[2] // chunk
  logits_w, valid_w, kpos_Nx3C = local.window_logits(
    qp, kp, mp, left=reach, right=reach, chunk=chunk
  )
  # Global keys get their own columns; drop them from the window so none counts twice.
  valid_w = jnp.broadcast_to(valid_w & (kpos_Nx3C >= g)[None, None, :, None, :], logits_w.shape)
  q_BxHxNxCxD = qp.reshape(b, h, n, chunk, d)
  logits_g = jnp.einsum("bhncd,bhgd->bhncg", q_BxHxNxCxD, kp[:, :, :g]) / math.sqrt(d)
  valid_g = jnp.broadcast_to(mp[:, None, None, None, :g], logits_g.shape)
  p, _ = softmax.masked_softmax(
    jnp.concatenate([logits_w, logits_g], -1), jnp.concatenate([valid_w, valid_g], -1)
  )
  p_w, p_g = p[..., : 3 * chunk], p[..., 3 * chunk :]
  o = jnp.einsum("bhnck,bhnkd->bhncd", p_w, local.neighbour_chunks(vp, chunk, axis=2)) + jnp.einsum(
    "bhncg,bhgd->bhncd", p_g, vp[:, :, :g]
  )
  o = o.reshape(vp.shape)[:, :, :length]

  # Global queries see every real key: a [G, L] strip.
  logits_gq = jnp.einsum("bhgd,bhld->bhgl", q[:, :, :g], k) / math.sqrt(d)
  p_gq, _ = softmax.masked_softmax(
    logits_gq, jnp.broadcast_to(m[:, None, None, :], logits_gq.shape)
  )
  o = o.at[:, :, :g].set(jnp.einsum("bhgl,bhld->bhgd", p_gq, v))
  return working_layout.finish(o, m, query.dtype)


class LongformerAttention(nnx.Module):
  """Registry module for `longformer_attention` (parameter-free; knobs as there).

  Defaults are the MRA paper's LRA config: window 64, first token global.
  """

  Knobs = LongformerKnobs

  def __init__(
    self,
    knobs: LongformerKnobs,
    *,
    num_heads: int,
    head_dim: int,
    max_length: int,
    rngs: nnx.Rngs,
  ):
    del num_heads, head_dim, max_length, rngs  # No parameters; any length works.
    self.knobs = knobs

  def __call__(self, query, key, value, mask=None) -> jax.Array:
    return longformer_attention(query, key, value, mask, knobs=self.knobs)
