"""Linformer (Wang et al., 2020): softmax attention over k learned projections of the keys.

K and V ([L, D]) are compressed along L by a learned E ([k, max_length]) to [k, D], so the
cost is O(L k D). As in the MRA paper's config, one E serves keys and values and all heads
(`share_kv=False` gives V its own F); sharing across layers is the model's business.

Length rule: E is sized for `max_length`. A shorter input uses the first L columns of E (the
columns that positions 0..L-1 had during training), which equals zero-padding the input to
`max_length`. An input longer than `max_length` is refused with ValueError. Padded tokens are
zero before the projection, so they contribute nothing.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from mra_jax import checks
from mra_jax.attentions import working_layout


def linformer_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  mask: jax.Array | None = None,
  *,
  e_proj: jax.Array,
  f_proj: jax.Array | None = None,
) -> jax.Array:
  """Linformer attention with given projections.

  Args:
    query: [B, L, H, D] float32 / bfloat16 / float16.
    key: [B, L, H, D].
    value: [B, L, H, Dv].
    mask: optional [B, L] bool or 0/1, True = real token.
    e_proj: [k, Lmax] key projection, Lmax >= L (its first L columns are used).
    f_proj: [k, Lmax] value projection; None = e_proj.

  Returns:
    [B, L, H, Dv] in query's dtype; padded queries are 0.

  Raises:
    ValueError: bad shapes, or L longer than the projection.
  """
  q, k, v, m = working_layout.prepare(query, key, value, mask)
  length = q.shape[2]
  f_proj = e_proj if f_proj is None else f_proj
  for name, p in (("e_proj", e_proj), ("f_proj", f_proj)):
    if p.ndim != 2 or p.shape[1] < length:
      raise ValueError(
        f"{name} must be [k, Lmax] with Lmax >= input length {length}; got "
        f"{name}.shape={p.shape} (the input is longer than max_length)"
      )
  e_KxL = e_proj[:, :length].astype(jnp.float32)
  f_KxL = f_proj[:, :length].astype(jnp.float32)
  k_BxHxKxD = jnp.einsum("kl,bhld->bhkd", e_KxL, k)
  v_BxHxKxD = jnp.einsum("kl,bhld->bhkd", f_KxL, v)
  logits = jnp.einsum("bhld,bhkd->bhlk", q, k_BxHxKxD) / math.sqrt(q.shape[-1])
  # Softmax with the division after the [L, k] x [k, D] product: an [L, D] division instead
  # of an [L, k] one, and a simpler backward (about 1.5x faster fwd+bwd at L=16384 on CPU).
  e = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
  o = jnp.einsum("bhlk,bhkd->bhld", e, v_BxHxKxD) / jnp.sum(e, axis=-1, keepdims=True)
  return working_layout.finish(o, m, query.dtype)


@dataclasses.dataclass(frozen=True)
class LinformerKnobs:
  """Linformer's knobs (the MRA paper's LRA config: k = 256, one projection for K and V).

  Attributes:
    projection_length: k, the compressed key length in tokens, >= 1 (256 in the MRA
      paper's config).
    share_kv: one projection E for keys and values (the MRA paper's config), else a
      separate F for the values.
  """

  projection_length: int = 256
  share_kv: bool = True

  def __post_init__(self):
    checks.check_int("projection_length", self.projection_length, minimum=1)


class LinformerAttention(nnx.Module):
  """Registry module for Linformer; owns E (and F unless shared); knobs in `LinformerKnobs`."""

  Knobs = LinformerKnobs

  def __init__(
    self,
    knobs: LinformerKnobs,
    *,
    num_heads: int,
    head_dim: int,
    max_length: int,
    rngs: nnx.Rngs,
  ):
    del num_heads, head_dim
    checks.check_int("max_length", max_length, minimum=1)
    self.knobs = knobs
    self.max_length = max_length
    k = knobs.projection_length
    # N(0, 1/k) entries (the 1/sqrt(k) scale of the Linformer code), fixed at init.
    init = lambda: jax.random.normal(rngs.params(), (k, max_length), jnp.float32) / math.sqrt(k)
    self.e_proj = nnx.Param(init())
    self.f_proj = None if knobs.share_kv else nnx.Param(init())

  def __call__(self, query, key, value, mask=None) -> jax.Array:
    if query.ndim >= 2 and query.shape[1] > self.max_length:
      raise ValueError(
        f"Linformer's projection covers max_length={self.max_length} tokens; "
        f"got an input of length {query.shape[1]}"
      )
    f = None if self.f_proj is None else self.f_proj[...]
    return linformer_attention(query, key, value, mask, e_proj=self.e_proj[...], f_proj=f)
