"""Shared by the sparse attentions' tests: random inputs, a padding mask, the dense oracle."""

import jax
import jax.numpy as jnp
import numpy as np

from mra_jax import reference


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


# `reference.softmax_attention` (the library's one dense softmax formula), compiled once per
# shape: `softmax_oracle(q, k, v, mask, allowed=pattern)` is softmax over the `allowed` real
# keys of each query, the computation the sparse attentions must reproduce. Small L only.
softmax_oracle = jax.jit(reference.softmax_attention)
