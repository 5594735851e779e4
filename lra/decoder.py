"""The LM task's model: a causal byte-level Transformer decoder with rotary positions.

Byte embedding (256 ids; 0 separates documents), pre-LN blocks (causal self-attention from
the `mra_jax.attentions` registry, then a GELU MLP), a final LN and the output projection
tied to the embedding: logits = LN(x) @ E^T. The attention core is any registered attention
with a causal form (`models.causal_attentions()`: softmax, local, mra2, mra2_s);
`models.ModelConfig` forces its `is_causal=True`.

Positions are rotary (RoPE, Su et al. 2021): query and key pairs of dimensions are rotated by
angles proportional to the position before the registry core sees them, so q_i . k_j depends
on the positions through i - j only. No weight is tied to a length: the same parameters run
at any length (the test bits per byte at longer lengths, `RunConfig.eval_lengths`, use the
model trained at `max_length` unchanged), and the core needs no change for them, MRA's block
summaries included (a block mean of rotated keys is what MRA pools). A learned table would
stop at the trained length; sinusoidal embeddings added to the input do not give the logits
a relative form.

Decoding: `init_cache` and `decode` run a prompt, then one byte at a time, through each
layer's cache (`lra.decode_cache`), giving the logits `__call__` gives at those positions.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lra import decode_cache, models
from mra_jax import attentions

# The rotary base of RoFormer and most decoders since: wavelengths from 2 pi to about
# 2 pi * 10^4 positions, longer than any length here.
ROPE_BASE = 10_000.0


def rotary(x_BxTxHxD: jax.Array, positions_T: jax.Array) -> jax.Array:
  """Rotates the pairs (d, d + D/2) of `x` by position * ROPE_BASE^(-2d/D) (float32 math).

  Args:
    x_BxTxHxD: queries or keys; D even.
    positions_T: int positions of the T tokens.

  Returns:
    x rotated, in x's dtype.
  """
  half = x_BxTxHxD.shape[-1] // 2
  inv_freq_F = ROPE_BASE ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_TxF = positions_T.astype(jnp.float32)[:, None] * inv_freq_F[None, :]
  cos = jnp.cos(angle_TxF)[None, :, None, :]
  sin = jnp.sin(angle_TxF)[None, :, None, :]
  x = x_BxTxHxD.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxHxD.dtype)


def _fold(key: jax.Array | None, *data: int) -> jax.Array | None:
  if key is None:
    return None
  for d in data:
    key = jax.random.fold_in(key, d)
  return key


class CausalSelfAttention(nnx.Module):
  """q/k/v/out projections, rotary q and k, and a causal registry core."""

  def __init__(self, cfg: models.ModelConfig, *, rngs: nnx.Rngs):
    self.num_heads = cfg.num_heads
    self.head_dim = cfg.qkv_dim // cfg.num_heads
    self.knobs = cfg.attention_knobs
    dense = lambda fin, fout: nnx.Linear(
      fin, fout, use_bias=cfg.qkv_bias, dtype=cfg.dtype, rngs=rngs
    )
    self.query = dense(cfg.embed_dim, cfg.qkv_dim)
    self.key = dense(cfg.embed_dim, cfg.qkv_dim)
    self.value = dense(cfg.embed_dim, cfg.qkv_dim)
    self.out = dense(cfg.qkv_dim, cfg.embed_dim)
    self.core = attentions.build(
      cfg.attention,
      num_heads=cfg.num_heads,
      head_dim=self.head_dim,
      max_length=cfg.max_length,
      rngs=rngs,
      knobs=cfg.attention_knobs,
    )

  def _qkv(self, x_BxTxE: jax.Array, positions_T: jax.Array):
    B, T, _ = x_BxTxE.shape
    heads = lambda y: y.reshape(B, T, self.num_heads, self.head_dim)
    q = rotary(heads(self.query(x_BxTxE)), positions_T)
    k = rotary(heads(self.key(x_BxTxE)), positions_T)
    return q, k, heads(self.value(x_BxTxE))

  def __call__(self, x_BxLxE: jax.Array, mask_BxL: jax.Array) -> jax.Array:
    B, L, _ = x_BxLxE.shape
    q, k, v = self._qkv(x_BxLxE, jnp.arange(L))
    o_BxLxHxD = self.core(q, k, v, mask=mask_BxL)
    return self.out(o_BxLxHxD.reshape(B, L, -1).astype(x_BxLxE.dtype))

  def decode(self, x_BxTxE: jax.Array, cache):
    """The chunk's outputs at positions cache.index .. + T - 1, and the updated cache."""
    B, T, _ = x_BxTxE.shape
    q, k, v = self._qkv(x_BxTxE, cache.index + jnp.arange(T))
    o_BxTxHxD, cache = decode_cache.attend(self.knobs, cache, q, k, v)
    return self.out(o_BxTxHxD.reshape(B, T, -1).astype(x_BxTxE.dtype)), cache


class DecoderBlock(nnx.Module):
  """Pre-LN block: x + Drop(Attn(LN(x))), then x + Drop(W2 Drop(GELU(W1 LN(x))))."""

  def __init__(self, cfg: models.ModelConfig, *, rngs: nnx.Rngs):
    self.rate = cfg.dropout_rate
    self.ln_attention = nnx.LayerNorm(cfg.embed_dim, dtype=cfg.dtype, rngs=rngs)
    self.attention = CausalSelfAttention(cfg, rngs=rngs)
    self.ln_mlp = nnx.LayerNorm(cfg.embed_dim, dtype=cfg.dtype, rngs=rngs)
    self.mlp_in = nnx.Linear(cfg.embed_dim, cfg.mlp_dim, dtype=cfg.dtype, rngs=rngs)
    self.mlp_out = nnx.Linear(cfg.mlp_dim, cfg.embed_dim, dtype=cfg.dtype, rngs=rngs)

  def _mlp(self, x_BxLxE, dropout_key):
    h = jax.nn.gelu(self.mlp_in(self.ln_mlp(x_BxLxE)), approximate=False)
    h = models.dropout(h, self.rate, _fold(dropout_key, 1))
    return x_BxLxE + models.dropout(self.mlp_out(h), self.rate, _fold(dropout_key, 2))

  def __call__(self, x_BxLxE, mask_BxL, dropout_key):
    y = self.attention(self.ln_attention(x_BxLxE), mask_BxL)
    x_BxLxE = x_BxLxE + models.dropout(y, self.rate, _fold(dropout_key, 0))
    return self._mlp(x_BxLxE, dropout_key)

  def decode(self, x_BxTxE, cache):
    y, cache = self.attention.decode(self.ln_attention(x_BxTxE), cache)
    return self._mlp(x_BxTxE + y, None), cache


class Decoder(nnx.Module):
  """Byte ids [B, L] (and a mask of the real ones) -> next-byte logits [B, L, 256] float32."""

  def __init__(self, cfg: models.ModelConfig, *, rngs: nnx.Rngs):
    if cfg.objective != "next_token" or cfg.positions != "rope":
      raise ValueError(
        "the decoder is the next-token model with rotary positions; got "
        f"objective={cfg.objective!r}, positions={cfg.positions!r}"
      )
    self.rate = cfg.dropout_rate
    self.num_heads = cfg.num_heads
    self.head_dim = cfg.qkv_dim // cfg.num_heads
    self.knobs = cfg.attention_knobs
    self.embed = nnx.Embed(
      cfg.vocab_size,
      cfg.embed_dim,
      dtype=cfg.dtype,
      embedding_init=nnx.initializers.normal(cfg.embed_init_std),
      rngs=rngs,
    )
    self.blocks = nnx.List([DecoderBlock(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.ln_final = nnx.LayerNorm(cfg.embed_dim, dtype=cfg.dtype, rngs=rngs)

  def _logits(self, x_BxLxE: jax.Array) -> jax.Array:
    return self.embed.attend(self.ln_final(x_BxLxE)).astype(jnp.float32)

  def __call__(
    self,
    inputs_BxL: jax.Array,
    mask_BxL: jax.Array | None = None,
    dropout_key: jax.Array | None = None,
  ) -> jax.Array:
    """Logits of the byte after each position; any length L (rotary positions)."""
    if mask_BxL is None:
      mask_BxL = jnp.ones(inputs_BxL.shape, bool)
    mask_BxL = mask_BxL.astype(bool)
    x_BxLxE = models.dropout(self.embed(inputs_BxL), self.rate, _fold(dropout_key, 0, 0))
    for i, block in enumerate(self.blocks):
      x_BxLxE = block(x_BxLxE, mask_BxL, _fold(dropout_key, i + 1))
    return self._logits(x_BxLxE)

  def init_cache(self, batch: int, max_length: int) -> list:
    """An empty cache per layer for up to `max_length` positions."""
    return [
      decode_cache.init(
        self.knobs,
        batch=batch,
        max_length=max_length,
        num_heads=self.num_heads,
        head_dim=self.head_dim,
      )
      for _ in self.blocks
    ]

  def decode(self, ids_BxT: jax.Array, caches: list) -> tuple[jax.Array, list]:
    """Logits [B, T, 256] of the chunk `ids_BxT` (positions from the caches' index: a prompt
    from 0, then one byte at a time), and the caches with the chunk written."""
    x_BxTxE = self.embed(ids_BxT)
    out = []
    for block, cache in zip(self.blocks, caches):
      x_BxTxE, cache = block.decode(x_BxTxE, cache)
      out.append(cache)
    return self._logits(x_BxTxE), out
