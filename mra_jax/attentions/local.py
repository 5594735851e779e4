"""Local attention: a sliding window (or non-overlapping blocks) of exact softmax.

This file also holds the small pieces every sparse baseline in this package shares
(input checks, the [B, H, L, D] working layout, chunked neighbour windows, a masked
softmax that never yields NaN), so Longformer, BigBird, Reformer, H-Transformer-1D
and Scatterbrain compute their patterns the same way.

Only the band is computed: queries are cut into chunks of C tokens and each chunk
meets the keys of its own and its two neighbouring chunks (3C keys), so time and
memory are O(L * window), never O(L^2).
"""
# pylint: disable=invalid-name

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx


class FixedRandom(nnx.Variable):
  """Random state drawn once from the module's rngs and never trained.

  Not an `nnx.Param`, so an optimiser built with `wrt=nnx.Param` leaves it alone,
  while it still lives in the module state (checkpointed, split/merged with it).
  """


def _mix32(x):
  """murmur3's 32-bit finaliser: a bijection that scrambles every input bit."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def hash_uniform(random_key: jax.Array, shape: tuple[int, ...], stream: int = 0):
  """Uniform [0, 1) float32 numbers from a counter-based hash of (key, index).

  Used for the patterns drawn inside jit (BigBird's random blocks, Reformer's
  rotations, Scatterbrain's features): `jax.random`'s threefry costs seconds of CPU
  compile time per new shape, this costs almost nothing, and it is bit-identical on
  every backend and version. Statistical quality (murmur3 finaliser, two rounds) is
  ample for choosing blocks and random projections; it is not a cryptographic
  generator.

  Args:
    random_key: a typed jax.random key or its raw uint32 key data.
    shape: output shape.
    stream: selects an independent stream for the same key.
  """
  return _hash_uniform(_key_words(random_key), tuple(shape), stream)


def hash_normal(random_key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Standard normal float32 numbers (Box-Muller on two `hash_uniform` streams)."""
  return _hash_normal(_key_words(random_key), tuple(shape))


def _key_words(random_key):
  if jnp.issubdtype(random_key.dtype, jax.dtypes.prng_key):
    random_key = jax.random.key_data(random_key)
  return jnp.ravel(random_key).astype(jnp.uint32)


# Jitted whole: run eagerly, each of the ~20 integer ops would compile on its own.
@functools.partial(jax.jit, static_argnames=("shape", "stream"))
def _hash_uniform(words, shape, stream):
  seed_a = _mix32(words[0] ^ jnp.uint32(0x9E3779B9 * (stream + 1) & 0xFFFFFFFF))
  seed_b = _mix32(words[-1] + seed_a)
  counter = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
  bits = _mix32(_mix32(counter ^ seed_a) + seed_b)
  return (bits >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


@functools.partial(jax.jit, static_argnames="shape")
def _hash_normal(words, shape):
  u1 = 1.0 - _hash_uniform(words, shape, 1)  # (0, 1]: log is finite.
  u2 = _hash_uniform(words, shape, 2)
  return jnp.sqrt(-2.0 * jnp.log(u1)) * jnp.cos(2.0 * jnp.pi * u2)


def check_int(name: str, value, *, minimum: int) -> None:
  """Raises ValueError unless `value` is an int >= minimum (message names it)."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}; got {name}={value!r}")


def prepare(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None):
  """Checks shapes and returns float32 [B, H, L, D] tensors and a bool [B, L] mask.

  Padded positions are zeroed in q, k and v so that whatever garbage they held
  (even inf or NaN) cannot reach a real output through a 0 * x product.
  """
  for name, x in (("query", query), ("key", key), ("value", value)):
    if x.ndim != 4:
      raise ValueError(f"{name} must be [B, L, H, D]; got {name}.shape={x.shape}")
  if key.shape != query.shape:
    raise ValueError(
      "sparse self-attention patterns need key.shape == query.shape; got "
      f"key.shape={key.shape}, query.shape={query.shape}"
    )
  if value.shape[:3] != query.shape[:3]:
    raise ValueError(
      f"value must be [B, L, H, Dv] like query; got value.shape={value.shape}, "
      f"query.shape={query.shape}"
    )
  b, length = query.shape[:2]
  if mask is None:
    mask_BxL = jnp.ones((b, length), bool)
  else:
    if mask.shape != (b, length):
      raise ValueError(f"mask must be [B, L] = {(b, length)}; got mask.shape={mask.shape}")
    mask_BxL = mask.astype(bool)
  keep = mask_BxL[:, :, None, None]

  def to_bhld(x):
    x = jnp.where(keep, x.astype(jnp.float32), 0.0)
    return jnp.transpose(x, (0, 2, 1, 3))

  return to_bhld(query), to_bhld(key), to_bhld(value), mask_BxL


def finish(o_BxHxLxD: jax.Array, mask_BxL: jax.Array, dtype) -> jax.Array:
  """Back to [B, L, H, D] in `dtype`, cut to the mask's length, padded queries 0."""
  length = mask_BxL.shape[1]
  o_BxLxHxD = jnp.transpose(o_BxHxLxD[:, :, :length], (0, 2, 1, 3))
  return jnp.where(mask_BxL[:, :, None, None], o_BxLxHxD, 0.0).astype(dtype)


def pad_axis(x: jax.Array, multiple: int, axis: int) -> jax.Array:
  """Zero-pads `axis` of x up to a multiple of `multiple`."""
  extra = -x.shape[axis] % multiple
  if not extra:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths)


def masked_softmax(logits: jax.Array, valid: jax.Array, axis: int = -1):
  """Softmax over `axis` restricted to `valid` entries, in float32.

  Returns (probabilities, logsumexp). A row with no valid entry gets probabilities 0
  and logsumexp -inf, never NaN.
  """
  logits = jnp.where(valid, logits.astype(jnp.float32), -jnp.inf)
  m = jnp.max(logits, axis=axis, keepdims=True)
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  p = jnp.where(valid, jnp.exp(logits - m), 0.0)
  s = jnp.sum(p, axis=axis, keepdims=True)
  safe_s = jnp.where(s > 0, s, 1.0)
  lse = jnp.where(s > 0, jnp.log(safe_s) + m, -jnp.inf)
  return p / safe_s, jnp.squeeze(lse, axis)


def neighbour_chunks(x: jax.Array, chunk: int, axis: int) -> jax.Array:
  """Splits `axis` (length N*chunk) into N chunks and concatenates each chunk's
  previous, own and next chunk (zeros past either end).

  [..., N*C, ...] -> [..., N, 3C, ...] with the new N axis at `axis`.
  """
  shape = x.shape
  n = shape[axis] // chunk
  x = x.reshape(shape[:axis] + (n, chunk) + shape[axis + 1 :])
  widths = [(0, 0)] * x.ndim
  widths[axis] = (1, 1)
  x = jnp.pad(x, widths)
  take = lambda start: jax.lax.slice_in_dim(x, start, start + n, axis=axis)
  return jnp.concatenate([take(0), take(1), take(2)], axis=axis + 1)


def window_logits(q_BxHxLxD, k_BxHxLxD, mask_BxL, *, left: int, right: int, chunk: int):
  """Logits of each query against the keys at offsets [-left, right] around it.

  L must be a multiple of `chunk`, and left, right <= chunk.

  Returns:
    logits_BxHxNxCx3C (float32, scaled by 1/sqrt(D)); valid_BxHxNxCx3C (bool: in
    the band and a real key); kpos_Nx3C, the key position of each column.
  """
  b, h, length, d = q_BxHxLxD.shape
  n = length // chunk
  q_BxHxNxCxD = q_BxHxLxD.reshape(b, h, n, chunk, d)
  k_BxHxNx3CxD = neighbour_chunks(k_BxHxLxD, chunk, axis=2)
  logits = jnp.einsum("bhncd,bhnkd->bhnck", q_BxHxNxCxD, k_BxHxNx3CxD) / math.sqrt(d)
  offset_Cx3C = jnp.arange(3 * chunk)[None, :] - chunk - jnp.arange(chunk)[:, None]
  band_Cx3C = (offset_Cx3C >= -left) & (offset_Cx3C <= right)
  keyok_BxNx3C = neighbour_chunks(mask_BxL, chunk, axis=1)
  valid = band_Cx3C[None, None, None] & keyok_BxNx3C[:, None, :, None, :]
  kpos_Nx3C = (jnp.arange(n)[:, None] - 1) * chunk + jnp.arange(3 * chunk)[None, :]
  return logits, valid, kpos_Nx3C


def sliding_window_attention(
  q_BxHxLxD, k_BxHxLxD, v_BxHxLxD, mask_BxL, *, left: int, right: int
) -> jax.Array:
  """Exact softmax over keys j with i - left <= j <= i + right; [B, H, L, D] f32 out."""
  length = q_BxHxLxD.shape[2]
  left, right = min(left, length), min(right, length)
  chunk = max(left, right, 1)
  q, k, v = (pad_axis(x, chunk, axis=2) for x in (q_BxHxLxD, k_BxHxLxD, v_BxHxLxD))
  mask = pad_axis(mask_BxL, chunk, axis=1)
  logits, valid, _ = window_logits(q, k, mask, left=left, right=right, chunk=chunk)
  p, _ = masked_softmax(logits, valid)
  v_BxHxNx3CxD = neighbour_chunks(v, chunk, axis=2)
  o = jnp.einsum("bhnck,bhnkd->bhncd", p, v_BxHxNx3CxD)
  return o.reshape(v.shape)[:, :, :length]


def block_local_attention(q_BxHxLxD, k_BxHxLxD, v_BxHxLxD, mask_BxL, *, block: int) -> jax.Array:
  """Exact softmax inside non-overlapping blocks of `block` tokens."""
  b, h, length, d = q_BxHxLxD.shape
  block = min(block, length)
  q, k, v = (pad_axis(x, block, axis=2) for x in (q_BxHxLxD, k_BxHxLxD, v_BxHxLxD))
  mask = pad_axis(mask_BxL, block, axis=1)
  n = q.shape[2] // block
  split = lambda x: x.reshape(b, h, n, block, x.shape[-1])
  logits = jnp.einsum("bhncd,bhnkd->bhnck", split(q), split(k)) / math.sqrt(d)
  valid = mask.reshape(b, n, block)[:, None, :, None, :]
  p, _ = masked_softmax(logits, valid)
  o = jnp.einsum("bhnck,bhnkd->bhncd", p, split(v))
  return o.reshape(v.shape)[:, :, :length]


def local_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  mask: jax.Array | None = None,
  *,
  window_size: int = 64,
  block_local: bool = False,
) -> jax.Array:
  """Local attention: exact softmax restricted to a neighbourhood of each query.

  Sliding (default): query i attends to keys j with |i - j| <= window_size // 2, the
  convention of HF Longformer's `attention_window` (window_size + 1 keys for even
  sizes). Block-local (`block_local=True`): the sequence is cut into blocks of
  `window_size` tokens and each block attends only to itself (LRA's "Local Att").
  A window wider than the sequence is clipped to it, which gives exact softmax.

  Args:
    query: [B, L, H, D] float32 / bfloat16 / float16.
    key: [B, L, H, D], same shape as query.
    value: [B, L, H, Dv].
    mask: optional [B, L] bool or 0/1, True = real token.
    window_size: int >= 1, see above.
    block_local: block-local instead of sliding-window attention.

  Returns:
    [B, L, H, Dv] in query's dtype; padded query positions are 0.

  Raises:
    ValueError: bad shapes or window_size.
  """
  check_int("window_size", window_size, minimum=1)
  q, k, v, m = prepare(query, key, value, mask)
  if block_local:
    o = block_local_attention(q, k, v, m, block=window_size)
  else:
    o = sliding_window_attention(q, k, v, m, left=window_size // 2, right=window_size // 2)
  return finish(o, m, query.dtype)


class LocalAttention(nnx.Module):
  """Registry module for `local_attention` (parameter-free; knobs as there)."""

  def __init__(
    self,
    *,
    num_heads: int,
    head_dim: int,
    max_length: int,
    rngs: nnx.Rngs,
    window_size: int = 64,
    block_local: bool = False,
  ):
    del num_heads, head_dim, max_length, rngs  # No parameters; any length works.
    check_int("window_size", window_size, minimum=1)
    self.window_size = window_size
    self.block_local = block_local

  def __call__(self, query, key, value, mask=None) -> jax.Array:
    return local_attention(
      query, key, value, mask, window_size=self.window_size, block_local=self.block_local
    )
