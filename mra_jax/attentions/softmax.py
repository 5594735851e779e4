"""Softmax: the masked softmax the attentions here normalise with, and exact softmax attention.

`softmax_attention` is the registry's quadratic baseline, through
`jax.nn.dot_product_attention` (the call a user would make); the dense formula that
tests check it and every other attention against is `mra_jax.reference.softmax_attention`.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mra_jax.attentions import working_layout


def masked_softmax(
  logits: jax.Array, valid: jax.Array, axis: int = -1
) -> tuple[jax.Array, jax.Array]:
  """Softmax over `axis` restricted to `valid` entries, in float32.

  Args:
    logits: any float dtype.
    valid: bool, broadcastable to `logits`.
    axis: the axis normalised over.

  Returns:
    (probabilities, logsumexp): float32 probabilities of the broadcast shape, and the
    logsumexp over `axis` (that axis removed). A row with no valid entry gets
    probabilities 0 and logsumexp -inf, never NaN (also in the gradient).
  """
  logits = jnp.where(valid, logits.astype(jnp.float32), -jnp.inf)
  m = jnp.max(logits, axis=axis, keepdims=True)
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  p = jnp.where(valid, jnp.exp(logits - m), 0.0)
  s = jnp.sum(p, axis=axis, keepdims=True)
  safe_s = jnp.where(s > 0, s, 1.0)
  lse = jnp.where(s > 0, jnp.log(safe_s) + m, -jnp.inf)
  return p / safe_s, jnp.squeeze(lse, axis)


def softmax_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  mask: jax.Array | None = None,
  *,
  is_causal: bool = False,
) -> jax.Array:
  """softmax(q k^T / sqrt(D)) v over the real keys (causal: the real keys j <= i).

  Args:
    query: [B, L, H, D] float32 / bfloat16 / float16.
    key: [B, L, H, D].
    value: [B, L, H, Dv].
    mask: optional [B, L] bool or 0/1, True = real token.
    is_causal: query i attends to keys j <= i only.

  Returns:
    [B, L, H, Dv] in query's dtype; padded queries are 0. Logits and softmax are float32
    whatever the input dtype.

  Raises:
    ValueError: bad shapes.
  """
  q, k, v, m = working_layout.prepare(query, key, value, mask)
  to_blhd = lambda x: jnp.transpose(x, (0, 2, 1, 3))
  keys_Bx1x1xL = m[:, None, None, :]
  o = jax.nn.dot_product_attention(
    to_blhd(q), to_blhd(k), to_blhd(v), mask=keys_Bx1x1xL, is_causal=is_causal
  )
  return working_layout.finish(to_blhd(o), m, query.dtype)


@dataclasses.dataclass(frozen=True)
class SoftmaxKnobs:
  """Exact softmax attention's one knob.

  Attributes:
    is_causal: query i attends to keys j <= i only (a decoder's self-attention).
  """

  is_causal: bool = False

  def __post_init__(self):
    if not isinstance(self.is_causal, bool):
      raise ValueError(f"is_causal must be a bool; got is_causal={self.is_causal!r}")


class SoftmaxAttention(nnx.Module):
  """Registry module for `softmax_attention` (no parameters; causal or not)."""

  Knobs = SoftmaxKnobs

  def __init__(
    self, knobs: SoftmaxKnobs, *, num_heads: int, head_dim: int, max_length: int, rngs: nnx.Rngs
  ):
    del num_heads, head_dim, max_length, rngs
    self.knobs = knobs

  def __call__(self, query, key, value, mask=None) -> jax.Array:
    return softmax_attention(query, key, value, mask, is_causal=self.knobs.is_causal)
