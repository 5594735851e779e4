"""Block pooling: the low-resolution view of queries, keys and values.

Each block of `block_size` consecutive tokens is replaced by the mean of its real
(unpadded) tokens, and the number of real tokens is kept as the block's count
(docs/algorithm.md, "Block means and counts").
"""
# pylint: disable=invalid-name

from __future__ import annotations

import jax
import jax.numpy as jnp

# The published code divides block sums by (count + 1e-6), so an all-padding block
# pools to 0 instead of NaN.
POOLING_EPS = 1e-6


def block_counts(valid_BxL: jax.Array, block_size: int) -> jax.Array:
  """Real tokens per block: bool [B, L] -> float32 [B, N], N = L / block_size."""
  B, L = valid_BxL.shape
  return valid_BxL.reshape(B, L // block_size, block_size).sum(-1, dtype=jnp.float32)


def block_means(x_BxHxLxD: jax.Array, valid_BxL: jax.Array, block_size: int) -> jax.Array:
  """Mean of the real tokens of each block.

  Args:
    x_BxHxLxD: float array; L a multiple of `block_size`.
    valid_BxL: bool, True for real tokens. Padded entries of `x` are ignored (they
      may hold anything, NaN included).
    block_size: tokens per block.

  Returns:
    float32 [B, H, N, D]; 0 for a block without real tokens.
  """
  B, H, L, D = x_BxHxLxD.shape
  N = L // block_size
  x = jnp.where(valid_BxL[:, None, :, None], x_BxHxLxD.astype(jnp.float32), 0.0)
  sums_BxHxNxD = x.reshape(B, H, N, block_size, D).sum(axis=3)
  counts_BxN = block_counts(valid_BxL, block_size)
  return sums_BxHxNxD / (counts_BxN[:, None, :, None] + POOLING_EPS)
