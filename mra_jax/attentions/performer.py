"""Performer (Choromanski et al., ICLR 2021): FAVOR+ random-feature attention, O(L M D).

The default is the MRA paper's LRA setting: the softmax ("exp") kernel estimated with 256
positive orthogonal random features, phi(x) = exp(w x - |x|^2 / 2) / sqrt(M) on
x = x / D^(1/4), so E[phi(q) . phi(k)] = exp(q k / sqrt(D)). `kernel_type="relu"` is the
generalised ReLU kernel of the Nystromformer repo's config. The features are fixed (not
trained) and can be redrawn with `PerformerAttention.redraw`.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from mra_jax import checks
from mra_jax.attentions import hash_random, low_rank, working_layout

KERNEL_TYPES = ("exp", "relu")


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def orthogonal_features(
  random_key: jax.Array, num_features: int, head_dim: int, orthogonal: bool = True
) -> jax.Array:
  """Random projection [M, D] float32: rows orthogonal within blocks of D, chi norms.

  With `orthogonal=False` the rows are plain iid Gaussian. Jitted: one compile instead
  of one per eager op at module construction.
  """
  k_rows, k_norms = jax.random.split(random_key)
  if not orthogonal:
    return jax.random.normal(k_rows, (num_features, head_dim), jnp.float32)
  blocks = -(-num_features // head_dim)
  gauss = jax.random.normal(k_rows, (blocks, head_dim, head_dim), jnp.float32)
  q_blocks = jnp.linalg.qr(gauss)[0]  # [blocks, D, D], orthonormal columns.
  rows = jnp.swapaxes(q_blocks, -1, -2).reshape(blocks * head_dim, head_dim)[:num_features]
  norms = jnp.linalg.norm(jax.random.normal(k_norms, (num_features, head_dim)), axis=-1)
  return rows * norms[:, None]


def favor_features(
  x_BxHxLxD: jax.Array,
  projection_MxD: jax.Array,
  mask_BxL: jax.Array,
  *,
  is_query: bool,
  kernel_type: str = "exp",
) -> jax.Array:
  """Positive random features [B, H, L, M] float32, 0 at padded positions.

  For the exp kernel each row is divided by a stabiliser that cancels in the attention
  ratio: its own max for queries, the max over all real keys of a (batch, head) for keys.
  """
  d = x_BxHxLxD.shape[-1]
  m = projection_MxD.shape[0]
  x = x_BxHxLxD.astype(jnp.float32) * d**-0.25
  wx = jnp.einsum("bhld,md->bhlm", x, projection_MxD)
  valid = mask_BxL[:, None, :, None]
  if kernel_type == "relu":
    phi = jax.nn.relu(wx) / math.sqrt(m) + 1e-3  # The published small offset keeps rows > 0.
    return jnp.where(valid, phi, 0.0)
  z = wx - 0.5 * jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  if is_query:
    stab = jnp.max(z, axis=-1, keepdims=True)
  else:
    stab = jnp.max(jnp.where(valid, z, -jnp.inf), axis=(2, 3), keepdims=True)
    stab = jnp.where(jnp.isfinite(stab), stab, 0.0)
  phi = jnp.exp(z - jax.lax.stop_gradient(stab)) / math.sqrt(m)
  return jnp.where(valid, phi, 0.0)


def performer_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  mask: jax.Array | None = None,
  *,
  projection: jax.Array,
  kernel_type: str = "exp",
) -> jax.Array:
  """FAVOR+ attention with a given random projection.

  Args:
    query: [B, L, H, D] float32 / bfloat16 / float16.
    key: [B, L, H, D].
    value: [B, L, H, Dv].
    mask: optional [B, L] bool or 0/1, True = real token.
    projection: [M, D] random feature projection (see `orthogonal_features`).
    kernel_type: "exp" (softmax kernel, FAVOR+) or "relu".

  Returns:
    [B, L, H, Dv] in query's dtype; padded queries are 0.
  """
  checks.check_choice("kernel_type", kernel_type, KERNEL_TYPES)
  q, k, v, m = working_layout.prepare(query, key, value, mask)
  if projection.ndim != 2 or projection.shape[1] != q.shape[-1]:
    raise ValueError(
      f"projection must be [M, D={q.shape[-1]}]; got projection.shape={projection.shape}"
    )
  phi_q = favor_features(q, projection, m, is_query=True, kernel_type=kernel_type)
  phi_k = favor_features(k, projection, m, is_query=False, kernel_type=kernel_type)
  return working_layout.finish(low_rank.linear_attention(phi_q, phi_k, v), m, query.dtype)


@dataclasses.dataclass(frozen=True)
class PerformerKnobs:
  """Performer's knobs (the MRA paper's LRA config: 256 orthogonal features, softmax kernel).

  Attributes:
    num_features: M, random features per query and key, >= 1 (256 in the MRA paper's
      config); shared by the heads.
    kernel_type: "exp" (FAVOR+'s positive features of the softmax kernel, the MRA paper's
      config) or "relu" (the generalised ReLU kernel of the Nystromformer repo's config).
    orthogonal: orthogonal random features (FAVOR+, the MRA paper's config) or iid Gaussian
      ones.
  """

  num_features: int = 256
  kernel_type: str = "exp"
  orthogonal: bool = True

  def __post_init__(self):
    checks.check_int("num_features", self.num_features, minimum=1)
    checks.check_choice("kernel_type", self.kernel_type, KERNEL_TYPES)


class PerformerAttention(nnx.Module):
  """Registry module for Performer; owns its fixed random features (knobs in `PerformerKnobs`)."""

  Knobs = PerformerKnobs

  def __init__(
    self,
    knobs: PerformerKnobs,
    *,
    num_heads: int,
    head_dim: int,
    max_length: int,
    rngs: nnx.Rngs,
  ):
    del num_heads, max_length  # Shared by the heads (performer-pytorch); any length works.
    self.knobs, self.head_dim = knobs, head_dim
    self.projection = hash_random.FixedRandom(
      orthogonal_features(rngs.params(), knobs.num_features, head_dim, knobs.orthogonal)
    )

  def redraw(self, rngs: nnx.Rngs) -> None:
    """Draws new random features (Performer's periodic feature redrawing)."""
    self.projection[...] = orthogonal_features(
      rngs.params(), self.knobs.num_features, self.head_dim, self.knobs.orthogonal
    )

  def __call__(self, query, key, value, mask=None) -> jax.Array:
    return performer_attention(
      query, key, value, mask, projection=self.projection[...], kernel_type=self.knobs.kernel_type
    )
