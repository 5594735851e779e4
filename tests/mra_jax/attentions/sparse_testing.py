"""Shared by the sparse attentions' tests: random inputs, a padding mask, a dense oracle."""

import jax
import jax.numpy as jnp
import numpy as np


def random_qkv(
  batch: int, length: int, heads: int, head_dim: int, *, seed: int = 0, dtype=jnp.float32
):
  """Standard-normal q, k, v [B, L, H, D] (numpy draws: no threefry compile per shape)."""
  rng = np.random.default_rng(seed)
  return tuple(
    jnp.asarray(rng.standard_normal((batch, length, heads, head_dim)), dtype) for _ in range(3)
  )


def two_row_mask(length: int, padding: int):
  """[2, L] bool: row 0 all real, row 1 with its last `padding` tokens padded."""
  return jnp.arange(length)[None, :] < jnp.array([[length], [length - padding]])


@jax.jit
def dense_pattern_attention(q, k, v, allowed, mask):
  """Oracle: softmax over the `allowed` ([L, L] or [H, L, L]) real keys, built densely.

  Padded queries give 0. Small L only: this is the L x L computation the sparse
  attentions avoid.
  """
  allowed_1xHxLxL = allowed.reshape((1,) * (4 - allowed.ndim) + allowed.shape)
  s = jnp.einsum("blhd,bmhd->bhlm", q, k) / np.sqrt(q.shape[-1])
  ok = allowed_1xHxLxL & mask[:, None, None, :]
  p = jnp.where(ok, jax.nn.softmax(jnp.where(ok, s, -jnp.inf), -1), 0.0)
  o = jnp.einsum("bhlm,bmhd->blhd", p, v)
  return jnp.where(mask[:, :, None, None], o, 0.0)
