"""The query-side layout the grouped-query implementations share: a kv head's group stacked.

With grouped-query attention (Hk kv heads, Hq = group * Hk query heads), every query head of
a group walks its kv head's tile list. The implementations therefore lay a group's query
rows out together, block by block: for kv head g and query block r, the `group * bs` rows

    [query head g * group + 0: its bs rows of block r, ..., head g * group + group - 1: its]

so that one program (one chunk, on CPU) holds the whole group's rows of a query block and
loads each selected K/V tile once for all of them. Stacked row s of a kv head is query block
`s // (group * bs)`, query head `g * group + s // bs % group`, position `s // (group * bs)
* bs + s % bs`. With group 1 both functions return their argument unchanged.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import jax
import jax.numpy as jnp


def group_rows(x_BxHxL: jax.Array, *, kv_heads: int, block_size: int) -> jax.Array:
  """`(B, H, L, ...)` per query head -> `(B, Hk, L * group, ...)`, the group stacked per block."""
  B, H, L = x_BxHxL.shape[:3]
  group = H // kv_heads
  if group == 1:
    return x_BxHxL
  rest = x_BxHxL.shape[3:]
  N = L // block_size
  x = x_BxHxL.reshape(B, kv_heads, group, N, block_size, *rest)
  return jnp.swapaxes(x, 2, 3).reshape(B, kv_heads, N * group * block_size, *rest)


def ungroup_rows(x_BxHkxLG: jax.Array, *, heads: int, block_size: int) -> jax.Array:
  """The inverse of `group_rows`: `(B, Hk, L * group, ...)` -> `(B, H, L, ...)`."""
  B, Hk, LG = x_BxHkxLG.shape[:3]
  group = heads // Hk
  if group == 1:
    return x_BxHkxLG
  rest = x_BxHkxLG.shape[3:]
  N = LG // (group * block_size)
  x = x_BxHkxLG.reshape(B, Hk, N, group, block_size, *rest)
  return jnp.swapaxes(x, 2, 3).reshape(B, heads, N * block_size, *rest)
