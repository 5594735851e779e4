"""Registry modules for MRA-2 and MRA-2-s: thin wrappers of `mra_jax.mra_attention`.

Both take `mra_jax.MraConfig` as their knobs and pin its `approx_mode`. For the published
image / Pathfinder token order (4x8 patches), the LRA harness reorders the whole model's
tokens (`token_order="patch"`) and `mra_jax.MraSelfAttention` takes `input_shape=`.
"""
# pylint: disable=invalid-name

from __future__ import annotations

from typing import ClassVar

import jax
from flax import nnx

from mra_jax import attention


class Mra2Attention(nnx.Module):
  """MRA-2 (`approx_mode="full"`): high-resolution selected blocks + low-resolution rest.

  Knob defaults are the MRA paper's LRA configs (block 32, 8 blocks per row, budget from the
  runtime length); see `mra_jax.MraConfig` for each knob.
  """

  Knobs = attention.MraConfig
  FIXED_KNOBS: ClassVar[dict[str, str]] = {"approx_mode": "full"}

  def __init__(
    self,
    knobs: attention.MraConfig,
    *,
    num_heads: int,
    head_dim: int,
    max_length: int,
    rngs: nnx.Rngs,
  ):
    del num_heads, head_dim, max_length, rngs  # No parameters; any length works.
    self.config = knobs

  def __call__(self, query, key, value, mask=None) -> jax.Array:
    return attention.mra_attention(query, key, value, mask, config=self.config)


class Mra2SAttention(Mra2Attention):
  """MRA-2-s (`approx_mode="sparse"`): the selected high-resolution blocks only."""

  FIXED_KNOBS: ClassVar[dict[str, str]] = {"approx_mode": "sparse"}
