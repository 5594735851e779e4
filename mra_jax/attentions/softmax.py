"""Exact softmax attention through `jax.nn.dot_product_attention` (the quadratic baseline)."""
# pylint: disable=invalid-name

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mra_jax.attentions import base


def softmax_attention(
  query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
  """softmax(q k^T / sqrt(D)) v over the real keys.

  Args:
    query: [B, L, H, D] float32 / bfloat16 / float16.
    key: [B, L, H, D].
    value: [B, L, H, Dv].
    mask: optional [B, L] bool or 0/1, True = real token.

  Returns:
    [B, L, H, Dv] in query's dtype; padded queries are 0. Logits and softmax are float32
    whatever the input dtype.

  Raises:
    ValueError: bad shapes.
  """
  q, k, v, m = base.prepare(query, key, value, mask)
  to_blhd = lambda x: jnp.transpose(x, (0, 2, 1, 3))
  keys_Bx1x1xL = m[:, None, None, :]
  o = jax.nn.dot_product_attention(to_blhd(q), to_blhd(k), to_blhd(v), mask=keys_Bx1x1xL)
  return base.finish(to_blhd(o), m, query.dtype)


class SoftmaxAttention(nnx.Module):
  """Registry module for `softmax_attention` (no parameters, no knobs)."""

  def __init__(self, *, num_heads: int, head_dim: int, max_length: int, rngs: nnx.Rngs):
    del num_heads, head_dim, max_length, rngs

  def __call__(self, query, key, value, mask=None) -> jax.Array:
    return softmax_attention(query, key, value, mask)
