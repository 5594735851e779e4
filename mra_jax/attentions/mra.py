"""Registry modules for MRA-2 and MRA-2-s: thin wrappers of `mra_jax.mra_attention`.

`input_shape=(rows, cols)` reproduces the published image / Pathfinder runs: the tokens of
a row-major image are put in 4x8-patch order before attention (so each 32-token block is a
2-D patch) and back afterwards. The LRA harness can instead reorder the whole model's
tokens (`token_order="patch"`); use one or the other, not both.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import jax
from flax import nnx


class Mra2Attention(nnx.Module):
  """MRA-2 (`approx_mode="full"`): high-resolution selected blocks + low-resolution rest.

  Knob defaults are the MRA paper's LRA configs (block 32, 8 blocks per row, budget from the
  runtime length); see `mra_jax.mra_attention` for each knob.
  """

  approx_mode = "full"

  def __init__(
    self,
    *,
    num_heads: int,
    head_dim: int,
    max_length: int,
    rngs: nnx.Rngs,
    block_size: int = 32,
    block_per_row: int = 8,
    num_blocks: int | None = None,
    initial_prior_first_n_blocks: int = 0,
    initial_prior_diagonal_n_blocks: int = 0,
    impl: str = "auto",
    input_shape: tuple[int, int] | None = None,
  ):
    del num_heads, head_dim, rngs  # No parameters.
    from mra_jax import attention  # pylint: disable=g-import-not-at-top

    # Validates every knob now rather than at the first call.
    self.config = attention.MraConfig(
      block_size=block_size,
      block_per_row=block_per_row,
      num_blocks=num_blocks,
      approx_mode=self.approx_mode,
      initial_prior_first_n_blocks=initial_prior_first_n_blocks,
      initial_prior_diagonal_n_blocks=initial_prior_diagonal_n_blocks,
      impl=impl,
    )
    if input_shape is not None:
      input_shape = tuple(input_shape)
      if (
        len(input_shape) != 2
        or not all(isinstance(s, int) and s > 0 for s in input_shape)
        or input_shape[0] * input_shape[1] > max_length
      ):
        raise ValueError(
          "input_shape must be (rows, cols) of positive ints with rows*cols <= "
          f"max_length={max_length}; got input_shape={input_shape!r}"
        )
    self.input_shape = input_shape

  def __call__(self, query, key, value, mask=None) -> jax.Array:
    from mra_jax import attention, layout  # pylint: disable=g-import-not-at-top

    if self.input_shape is None:
      return attention.mra_attention_with_config(query, key, value, mask, config=self.config)
    shape = self.input_shape
    to, back = (
      (lambda x: layout.to_patch_order(x, shape)),
      (lambda x: layout.from_patch_order(x, shape)),
    )
    out = attention.mra_attention_with_config(
      to(query), to(key), to(value), None if mask is None else to(mask), config=self.config
    )
    return back(out)


class Mra2SAttention(Mra2Attention):
  """MRA-2-s (`approx_mode="sparse"`): the selected high-resolution blocks only."""

  approx_mode = "sparse"
