"""Inputs shared by the sparse attentions' tests: random q, k, v and a two-row padding mask."""

import jax.numpy as jnp
import numpy as np


def random_qkv(batch: int, length: int, heads: int, head_dim: int, *, seed: int = 0,
               dtype=jnp.float32):
  """Standard-normal q, k, v [B, L, H, D] (numpy draws: no threefry compile per shape)."""
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.standard_normal((batch, length, heads, head_dim)), dtype)
               for _ in range(3))


def two_row_mask(length: int, padding: int):
  """[2, L] bool: row 0 all real, row 1 with its last `padding` tokens padded."""
  return jnp.arange(length)[None, :] < jnp.array([[length], [length - padding]])
