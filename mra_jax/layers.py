"""Thin Flax NNX modules over the MRA functions: projections and knobs, no maths."""
# pylint: disable=invalid-name

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mra_jax import attention, checks, knobs, layout


class MraSelfAttention(nnx.Module):
  """Multi-head self-attention whose core is `mra_attention`.

  Owns the query/key/value/output projections (with bias, as the published module)
  and the MRA knobs: an `MraConfig` (`config=`), its fields as keywords, or both. With `input_shape=(rows, cols)` the tokens of an image are put
  in 4x8 patch order around the attention (the published image/Pathfinder setting),
  and back afterwards, so callers keep row-major tokens.
  """

  def __init__(
    self,
    num_heads: int,
    in_features: int,
    *,
    rngs: nnx.Rngs,
    qkv_features: int | None = None,
    input_shape: tuple[int, int] | None = None,
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    config: attention.MraConfig | None = None,
    **mra_knobs,
  ):
    qkv_features = qkv_features or in_features
    checks.check_int("num_heads", num_heads, minimum=1)
    checks.check_int("in_features", in_features, minimum=1)
    checks.check_int("qkv_features", qkv_features, minimum=1)
    if qkv_features % num_heads:
      raise ValueError(
        f"qkv_features must be divisible by num_heads; got "
        f"qkv_features={qkv_features}, num_heads={num_heads}"
      )
    self.config = knobs.make(attention.MraConfig, mra_knobs, base=config)
    self.num_heads = num_heads
    self.head_dim = qkv_features // num_heads
    self.input_shape = None if input_shape is None else tuple(input_shape)
    dense = lambda fin, fout: nnx.Linear(fin, fout, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.query = dense(in_features, qkv_features)
    self.key = dense(in_features, qkv_features)
    self.value = dense(in_features, qkv_features)
    self.out = dense(qkv_features, in_features)

  def __call__(self, x_BxLxE: jax.Array, mask_BxL: jax.Array | None = None) -> jax.Array:
    """[B, L, E] features and an optional [B, L] padding mask -> [B, L, E]."""
    if self.input_shape is not None:
      x_BxLxE = layout.to_patch_order(x_BxLxE, self.input_shape)
      if mask_BxL is not None:
        mask_BxL = layout.to_patch_order(mask_BxL, self.input_shape)
    B, L, _ = x_BxLxE.shape
    split = lambda y: y.reshape(B, L, self.num_heads, self.head_dim)
    out_BxLxHxD = attention.mra_attention(
      split(self.query(x_BxLxE)),
      split(self.key(x_BxLxE)),
      split(self.value(x_BxLxE)),
      mask_BxL,
      config=self.config,
    )
    y_BxLxE = self.out(out_BxLxHxD.reshape(B, L, -1))
    if self.input_shape is not None:
      y_BxLxE = layout.from_patch_order(y_BxLxE, self.input_shape)
    return y_BxLxE
