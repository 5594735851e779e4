"""Local attention: a sliding window (or non-overlapping blocks) of exact softmax.

Only the band is computed: queries are cut into chunks of C tokens and each chunk
meets the keys of its own and its two neighbouring chunks (3C keys), so time and
memory are O(L * window), never O(L^2). Longformer and Scatterbrain build their
windows from `window_logits` and `neighbour_chunks`.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from mra_jax import checks
from mra_jax.attentions import softmax, working_layout
from mra_jax.knobs import takes_knobs


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
  q, k, v = (working_layout.pad_axis(x, chunk, axis=2) for x in (q_BxHxLxD, k_BxHxLxD, v_BxHxLxD))
  mask = working_layout.pad_axis(mask_BxL, chunk, axis=1)
  logits, valid, _ = window_logits(q, k, mask, left=left, right=right, chunk=chunk)
  p, _ = softmax.masked_softmax(logits, valid)
  v_BxHxNx3CxD = neighbour_chunks(v, chunk, axis=2)
  o = jnp.einsum("bhnck,bhnkd->bhncd", p, v_BxHxNx3CxD)
  return o.reshape(v.shape)[:, :, :length]


def block_local_attention(
  q_BxHxLxD, k_BxHxLxD, v_BxHxLxD, mask_BxL, *, block: int, causal: bool = False
) -> jax.Array:
  """Exact softmax inside non-overlapping blocks of `block` tokens (causal: keys j <= i)."""
  b, h, length, d = q_BxHxLxD.shape
  block = min(block, length)
  q, k, v = (working_layout.pad_axis(x, block, axis=2) for x in (q_BxHxLxD, k_BxHxLxD, v_BxHxLxD))
  mask = working_layout.pad_axis(mask_BxL, block, axis=1)
  n = q.shape[2] // block
  split = lambda x: x.reshape(b, h, n, block, x.shape[-1])
  logits = jnp.einsum("bhncd,bhnkd->bhnck", split(q), split(k)) / math.sqrt(d)
  valid = mask.reshape(b, n, block)[:, None, :, None, :]
  if causal:
    valid = valid & jnp.tri(block, dtype=bool)[None, None, None]
  p, _ = softmax.masked_softmax(logits, valid)
  o = jnp.einsum("bhnck,bhnkd->bhncd", p, split(v))
  return o.reshape(v.shape)[:, :, :length]


@dataclasses.dataclass(frozen=True)
class LocalKnobs:
  """Local attention's knobs (LRA's "Local Att" with `block_local=True`).

  Attributes:
    window_size: sliding: query i attends to keys j with |i - j| <= window_size // 2 (HF
      Longformer's `attention_window` convention), or causal to the window_size keys
      i - window_size < j <= i; block-local: the block length.
    block_local: non-overlapping blocks that attend only to themselves, instead of a
      sliding window.
    is_causal: query i attends to keys j <= i only: the window's past half widened to
      window_size keys (sliding), or the block's keys up to i (block-local).
  """

  window_size: int = 64
  block_local: bool = False
  is_causal: bool = False

  def __post_init__(self):
    checks.check_int("window_size", self.window_size, minimum=1)
    if not isinstance(self.is_causal, bool):
      raise ValueError(f"is_causal must be a bool; got is_causal={self.is_causal!r}")


@takes_knobs(LocalKnobs, param="knobs")
def local_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  mask: jax.Array | None = None,
  *,
  knobs: LocalKnobs,
) -> jax.Array:
  """Local attention: exact softmax restricted to a neighbourhood of each query.

  Sliding (default): query i attends to keys j with |i - j| <= window_size // 2, the
  convention of HF Longformer's `attention_window` (window_size + 1 keys for even
  sizes). Block-local (`block_local=True`): the sequence is cut into blocks of
  `window_size` tokens and each block attends only to itself (LRA's "Local Att").
  A window wider than the sequence is clipped to it, which gives exact softmax.
  Causal (`is_causal=True`): sliding attends to the window_size keys
  i - window_size < j <= i (the same number of keys as a causal block-sparse row of that
  many positions), block-local to the keys of its block up to i.

  Args:
    query: [B, L, H, D] float32 / bfloat16 / float16.
    key: [B, L, H, D], same shape as query.
    value: [B, L, H, Dv].
    mask: optional [B, L] bool or 0/1, True = real token.
    knobs: `LocalKnobs` (or its fields as keywords: window_size, block_local, is_causal).

  Returns:
    [B, L, H, Dv] in query's dtype; padded query positions are 0.

  Raises:
    ValueError: bad shapes or knobs.
  """
  window_size = knobs.window_size
  q, k, v, m = working_layout.prepare(query, key, value, mask)
  if knobs.block_local:
    o = block_local_attention(q, k, v, m, block=window_size, causal=knobs.is_causal)
  elif knobs.is_causal:
    o = sliding_window_attention(q, k, v, m, left=window_size - 1, right=0)
  else:
    o = sliding_window_attention(q, k, v, m, left=window_size // 2, right=window_size // 2)
  return working_layout.finish(o, m, query.dtype)


class LocalAttention(nnx.Module):
  """Registry module for `local_attention` (parameter-free; knobs as there)."""

  Knobs = LocalKnobs

  def __init__(
    self, knobs: LocalKnobs, *, num_heads: int, head_dim: int, max_length: int, rngs: nnx.Rngs
  ):
    del num_heads, head_dim, max_length, rngs  # No parameters; any length works.
    self.knobs = knobs

  def __call__(self, query, key, value, mask=None) -> jax.Array:
    return local_attention(query, key, value, mask, knobs=self.knobs)
