"""Thin Flax NNX modules over the MRA functions: projections, knobs and a decode cache."""
# pylint: disable=invalid-name

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mra_jax import attention, checks, decode, knobs, layout


class MraSelfAttention(nnx.Module):
  """Multi-head self-attention whose core is `mra_attention`.

  Owns the query/key/value/output projections (with bias, as the published module) and the
  MRA knobs: an `MraConfig` (`config=`), its fields as keywords, or both. With
  `num_kv_heads` below `num_heads` the keys and values have fewer heads (grouped-query
  attention). With `input_shape=(rows, cols)` the tokens of an image are put in 4x8 patch
  order around the attention (the published image/Pathfinder setting), and back afterwards,
  so callers keep row-major tokens.

  Causal (`is_causal=True`), it decodes as `nnx.MultiHeadAttention` does: `init_cache(
  (B, max_length, E))`, then calls with `decode=True` on one token or a chunk of tokens at a
  time (a prefill, then steps); their outputs equal the full causal call's at the same
  positions (`mra_jax.decode`).
  """

  def __init__(
    self,
    num_heads: int,
    in_features: int,
    *,
    rngs: nnx.Rngs,
    qkv_features: int | None = None,
    num_kv_heads: int | None = None,
    input_shape: tuple[int, int] | None = None,
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    config: attention.MraConfig | None = None,
    **mra_knobs,
  ):
    qkv_features = qkv_features or in_features
    num_kv_heads = num_kv_heads or num_heads
    checks.check_int("num_heads", num_heads, minimum=1)
    checks.check_int("in_features", in_features, minimum=1)
    checks.check_int("qkv_features", qkv_features, minimum=1)
    checks.check_int("num_kv_heads", num_kv_heads, minimum=1)
    if qkv_features % num_heads:
      raise ValueError(
        f"qkv_features must be divisible by num_heads; got "
        f"qkv_features={qkv_features}, num_heads={num_heads}"
      )
    if num_heads % num_kv_heads:
      raise ValueError(
        f"num_kv_heads must divide num_heads; got num_heads={num_heads}, "
        f"num_kv_heads={num_kv_heads}"
      )
    self.config = knobs.make(attention.MraConfig, mra_knobs, base=config)
    if input_shape is not None and self.config.is_causal:
      raise ValueError(
        f"input_shape reorders tokens into patches, which has no causal order; got "
        f"input_shape={input_shape!r} with is_causal=True"
      )
    self.num_heads = num_heads
    self.num_kv_heads = num_kv_heads
    self.head_dim = qkv_features // num_heads
    self.input_shape = None if input_shape is None else tuple(input_shape)
    dense = lambda fin, fout: nnx.Linear(fin, fout, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    kv_features = num_kv_heads * self.head_dim
    self.query = dense(in_features, qkv_features)
    self.key = dense(in_features, kv_features)
    self.value = dense(in_features, kv_features)
    self.out = dense(qkv_features, in_features)
    self.cache = nnx.data(None)  # an nnx.Cache once init_cache is called

  def init_cache(self, input_shape: tuple[int, ...], dtype=jnp.float32) -> None:
    """Makes an empty decode cache for inputs of shape `(B, max_length, E)`.

    Raises:
      ValueError: the layer is not causal, or `input_shape` is not (B, L, E).
    """
    if len(input_shape) != 3:
      raise ValueError(f"input_shape must be (batch, max_length, features); got {input_shape!r}")
    B, L, _ = input_shape
    self.cache = nnx.Cache(
      decode.init_cache(
        B,
        L,
        self.num_heads,
        self.head_dim,
        num_kv_heads=self.num_kv_heads,
        dtype=dtype,
        config=self.config,
      )
    )

  def _heads(self, x_BxLxE: jax.Array):
    B, L, _ = x_BxLxE.shape
    split = lambda y, h: y.reshape(B, L, h, self.head_dim)
    return (
      split(self.query(x_BxLxE), self.num_heads),
      split(self.key(x_BxLxE), self.num_kv_heads),
      split(self.value(x_BxLxE), self.num_kv_heads),
    )

  def __call__(
    self, x_BxLxE: jax.Array, mask_BxL: jax.Array | None = None, *, decode: bool = False
  ) -> jax.Array:
    """[B, L, E] features and an optional [B, L] padding mask -> [B, L, E].

    With `decode=True` (causal layers, after `init_cache`): x holds the next L positions; the
    cache holds the earlier ones and takes these. Decoding takes no padding mask.
    """
    if decode:
      return self._decode(x_BxLxE, mask_BxL)
    if self.input_shape is not None:
      x_BxLxE = layout.to_patch_order(x_BxLxE, self.input_shape)
      if mask_BxL is not None:
        mask_BxL = layout.to_patch_order(mask_BxL, self.input_shape)
    B, L, _ = x_BxLxE.shape
    out_BxLxHxD = attention.mra_attention(*self._heads(x_BxLxE), mask_BxL, config=self.config)
    y_BxLxE = self.out(out_BxLxHxD.reshape(B, L, -1))
    if self.input_shape is not None:
      y_BxLxE = layout.from_patch_order(y_BxLxE, self.input_shape)
    return y_BxLxE

  def _decode(self, x_BxLxE: jax.Array, mask_BxL: jax.Array | None) -> jax.Array:
    if not self.config.is_causal:
      raise ValueError("decode=True needs a causal layer; got is_causal=False")
    if self.cache is None:
      raise ValueError("decode=True needs a cache: call init_cache((B, max_length, E)) first")
    if mask_BxL is not None:
      raise ValueError(
        "decoding writes every position as a real token and takes no padding mask; got "
        f"mask_BxL with shape={jnp.shape(mask_BxL)}"
      )
    B, L, _ = x_BxLxE.shape
    out_BxLxHxD, self.cache.value = decode.decode_step(
      self.cache.value, *self._heads(x_BxLxE), config=self.config
    )
    return self.out(out_BxLxHxD.reshape(B, L, -1))
