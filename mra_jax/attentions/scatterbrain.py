"""Scatterbrain attention (Chen et al., NeurIPS 2021): sparse + low-rank.

The softmax matrix exp(q k^T / sqrt(D)) is estimated as
  S + (Phi_q Phi_k^T - Phi_q Phi_k^T restricted to the window),
where S is exact inside a local window and Phi are Performer (FAVOR+) positive
random features. Inside the window the exact value replaces the low-rank estimate
(the estimate is subtracted there), so nothing is counted twice; outside it the
low-rank estimate stands alone. Numerator and normaliser are formed the same way and
combined in the log domain (float32), as the reference SBLocalAttention does.

Window: query i sees keys j with i - window_size // 2 <= j < i + (window_size + 1) // 2
(window_size keys, the fast_transformers `local_context` convention of the MRA
paper's harness). Cost O(L * (window + M) * D); no L x L matrix.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from mra_jax import checks
from mra_jax.attentions import hash_random, local, softmax, working_layout

_TINY = 1e-24  # Floor of the off-window low-rank normaliser (it is >= 0 exactly).


def orthogonal_random_features(
  random_key: jax.Array, num_features: int, head_dim: int
) -> jax.Array:
  """FAVOR+ projection: blocks of orthogonal rows with chi-distributed norms.

  Args:
    random_key: a jax.random key or its raw uint32 key data.
    num_features: M.
    head_dim: D.

  Returns:
    [M, D] float32, M = num_features.
  """
  num_blocks = -(-num_features // head_dim)
  # One hashed Gaussian draw (cheap to compile, see `hash_random.hash_normal`), split into
  # the square blocks to orthogonalise and the rows whose norms scale them.
  gauss = hash_random.hash_normal(random_key, (num_blocks * head_dim + num_features, head_dim))
  blocks = gauss[: num_blocks * head_dim].reshape(num_blocks, head_dim, head_dim)
  q_blocks = jnp.linalg.qr(blocks)[0]  # Batched: orthonormal columns per block.
  rows = jnp.swapaxes(q_blocks, 1, 2).reshape(-1, head_dim)[:num_features]
  norms = jnp.linalg.norm(gauss[num_blocks * head_dim :], axis=-1)
  return rows * norms[:, None]


def performer_features(
  x_BxHxLxD: jax.Array, projection_MxD: jax.Array, mask_BxL: jax.Array, *, is_query: bool
):
  """Positive softmax-kernel features phi(x) = exp(w x^ - |x^|^2 / 2) / sqrt(M).

  x^ = x / D^(1/4), so phi(q) . phi(k) estimates exp(q k / sqrt(D)). The features
  are returned divided by exp(log_scale) to stay in range: per row for queries, one
  number per (batch, head) over the real keys for keys. Padded keys get phi = 0.

  Returns:
    (phi_BxHxLxM float32, log_scale) with log_scale [B, H, L, 1] for queries and
    [B, H, 1, 1] for keys.
  """
  d = x_BxHxLxD.shape[-1]
  x = x_BxHxLxD.astype(jnp.float32) * d**-0.25
  z = jnp.einsum("bhld,md->bhlm", x, projection_MxD) - 0.5 * jnp.sum(
    jnp.square(x), axis=-1, keepdims=True
  )
  valid = mask_BxL[:, None, :, None]
  if is_query:
    log_scale = jnp.max(z, axis=-1, keepdims=True)
  else:
    log_scale = jnp.max(jnp.where(valid, z, -jnp.inf), axis=(2, 3), keepdims=True)
    log_scale = jnp.where(jnp.isfinite(log_scale), log_scale, 0.0)
  log_scale = jax.lax.stop_gradient(log_scale)
  phi = jnp.exp(z - log_scale) / math.sqrt(projection_MxD.shape[0])
  if not is_query:
    phi = jnp.where(valid, phi, 0.0)
  return phi, log_scale


def scatterbrain_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  mask: jax.Array | None = None,
  *,
  projection: jax.Array,
  window_size: int = 64,
) -> jax.Array:
  """Scatterbrain: exact local window + Performer features elsewhere.

  Args:
    query: [B, L, H, D] float32 / bfloat16 / float16.
    key: [B, L, H, D], same shape as query.
    value: [B, L, H, Dv].
    mask: optional [B, L] bool or 0/1, True = real token.
    projection: [M, D] random-feature matrix (`orthogonal_random_features`).
    window_size: int >= 1, keys per local window (clipped to the sequence).

  Returns:
    [B, L, H, Dv] in query's dtype; padded query positions are 0.

  Raises:
    ValueError: bad shapes or knobs.
  """
  checks.check_int("window_size", window_size, minimum=1)
  if projection.ndim != 2 or projection.shape[1] != query.shape[-1]:
    raise ValueError(
      f"projection must be [M, D={query.shape[-1]}]; got projection.shape={projection.shape}"
    )
  q, k, v, m = working_layout.prepare(query, key, value, mask)
  b, h, length, _ = q.shape
  left = min(window_size // 2, length)
  right = min((window_size + 1) // 2 - 1, length)
  chunk = max(left, right, 1)
  qp, kp, vp = (working_layout.pad_axis(x, chunk, axis=2) for x in (q, k, v))
  mp = working_layout.pad_axis(m, chunk, axis=1)
  n = qp.shape[2] // chunk
  lp = n * chunk

  phi_q, a_q = performer_features(qp, projection, mp, is_query=True)
  phi_k, a_k = performer_features(kp, projection, mp, is_query=False)
  log_prime = (a_q + a_k)[..., 0]  # [B, H, Lp]: phi_q . phi_k * exp(log_prime) ~ exp(s).

  logits_w, valid_w, _ = local.window_logits(qp, kp, mp, left=left, right=right, chunk=chunk)
  valid_w = jnp.broadcast_to(valid_w, logits_w.shape)
  chunks = lambda x: x.reshape(b, h, n, chunk, x.shape[-1])
  # Per neighbour chunk, so the [N, 3C, M] gathered features never exist.
  phi_k_pad = jnp.pad(chunks(phi_k), ((0, 0), (0, 0), (1, 1), (0, 0), (0, 0)))
  dots_w = jnp.concatenate(
    [jnp.einsum("bhncm,bhnkm->bhnck", chunks(phi_q), phi_k_pad[:, :, s : s + n]) for s in range(3)],
    axis=-1,
  )
  dots_w = jnp.where(valid_w, dots_w, 0.0)

  # Normaliser: exact window sum, plus the low-rank estimate of everything else.
  _, lse_local = softmax.masked_softmax(logits_w, valid_w)
  lse_local = lse_local.reshape(b, h, lp)
  z_all = jnp.einsum("bhlm,bhm->bhl", phi_q, jnp.sum(phi_k, axis=2))
  z_off = jnp.maximum(z_all - jnp.sum(dots_w, axis=-1).reshape(b, h, lp), _TINY)
  log_norm = jnp.logaddexp(lse_local, jnp.log(z_off) + log_prime)
  log_norm = jnp.where(jnp.isfinite(log_norm), log_norm, 0.0)

  prime_scale = jnp.exp(log_prime - log_norm)  # [B, H, Lp]
  w_local = jnp.where(
    valid_w, jnp.exp(logits_w - chunks(log_norm[..., None])), 0.0
  ) - dots_w * chunks(prime_scale[..., None])
  o_local = jnp.einsum(
    "bhnck,bhnkd->bhncd", w_local, local.neighbour_chunks(vp, chunk, axis=2)
  ).reshape(vp.shape)
  kv_MxDv = jnp.einsum("bhlm,bhld->bhmd", phi_k, vp)
  o_low = jnp.einsum("bhlm,bhmd->bhld", phi_q, kv_MxDv) * prime_scale[..., None]
  return working_layout.finish((o_local + o_low)[:, :, :length], m, query.dtype)


@dataclasses.dataclass(frozen=True)
class ScatterbrainKnobs:
  """Scatterbrain's knobs (the MRA paper's LRA config `scatterbrain/64`).

  Attributes:
    window_size: keys per local window, >= 1 (64 in the MRA paper's config): query i sees
      keys j with i - window_size // 2 <= j < i + (window_size + 1) // 2 (fast_transformers'
      `local_context`), clipped to the sequence.
    num_features: M, Performer random features shared by the heads, >= 1; None (the MRA
      paper's config) = int(D * ln D), the Performer / fly default (110 for D = 32).
  """

  window_size: int = 64
  num_features: int | None = None

  def __post_init__(self):
    checks.check_int("window_size", self.window_size, minimum=1)
    if self.num_features is not None:
      checks.check_int("num_features", self.num_features, minimum=1)


class ScatterbrainAttention(nnx.Module):
  """Registry module for Scatterbrain; owns its fixed random features.

  Defaults: window 64 (the MRA paper's LRA config); num_features=None means
  int(D * ln D) features, the Performer/fly default (110 for D = 32).
  """

  Knobs = ScatterbrainKnobs

  def __init__(
    self,
    knobs: ScatterbrainKnobs,
    *,
    num_heads: int,
    head_dim: int,
    max_length: int,
    rngs: nnx.Rngs,
  ):
    del num_heads, max_length  # Features are shared by heads; any length works.
    checks.check_int("head_dim", head_dim, minimum=1)
    num_features = knobs.num_features
    if num_features is None:
      num_features = max(int(head_dim * math.log(head_dim)), 1)
    self.knobs = knobs
    self.projection = hash_random.FixedRandom(
      orthogonal_random_features(rngs.params(), num_features, head_dim)
    )

  def __call__(self, query, key, value, mask=None) -> jax.Array:
    return scatterbrain_attention(
      query, key, value, mask, projection=self.projection[...], window_size=self.knobs.window_size
    )
