"""SOFT (Lu et al., NeurIPS 2021): softmax-free attention with a Gaussian kernel, O(L m D).

    S(a, b) = exp(-|a - b|^2 / 2) on a = q / D^(1/4), b = k / D^(1/4)
    out ~ S(Q, K~) pinv(S(Q~, K~)) S(Q~, K) V

SOFT ties queries and keys (`tie_qk=True`, the paper: one projection, S symmetric PSD); then
the `key` argument is ignored and the queries serve as keys. With `tie_qk=False` the keys
are used as given (a Nystrom form with separate landmarks). Landmarks come from consecutive
segments of ceil(L / m) tokens: SOFT's learned strided convolution (kernel = stride = segment,
then LayerNorm and GELU; `landmark_pooling="conv"`, sized from `max_length` and sliced for
shorter inputs) or plain masked segment means (`"mean"`). The pseudo-inverse is the
Newton-Schulz iteration SOFT uses (20 iterations). As in SOFT the output is not normalised
(the kernel is already in [0, 1]). Optional depthwise conv over V (0 = none, 33 in the
MRA configs).

Exact limit: with `"mean"` landmarks and m >= L every token is a landmark and the result is
S(Q, K) V exactly (up to the iterative pseudo-inverse).
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from mra_jax import checks
from mra_jax.attentions import low_rank, working_layout

LANDMARK_POOLINGS = ("conv", "mean")


def gaussian_kernel(a_BxHxNxD: jax.Array, b_BxHxMxD: jax.Array) -> jax.Array:
  """exp(-|a - b|^2 / 2) for all pairs, [B, H, N, M] float32 (clipped at 0 against round-off)."""
  sq = (
    jnp.sum(jnp.square(a_BxHxNxD), axis=-1)[..., :, None]
    + jnp.sum(jnp.square(b_BxHxMxD), axis=-1)[..., None, :]
    - 2.0 * jnp.einsum("bhnd,bhmd->bhnm", a_BxHxNxD, b_BxHxMxD)
  )
  return jnp.exp(-0.5 * jnp.maximum(sq, 0.0))


def soft_core(
  q_BxHxLxD,
  k_BxHxLxD,
  v_BxHxLxD,
  mask_BxL,
  q_land_BxHxMxD,
  k_land_BxHxMxD,
  land_ok_BxM,
  *,
  pinv_iterations: int,
) -> jax.Array:
  """S(Q, K~) pinv(S(Q~, K~)) S(Q~, K) V on scaled float32 inputs (landmarks given)."""
  ok_m = land_ok_BxM[:, None, None, :]
  k_1 = jnp.where(ok_m, gaussian_kernel(q_BxHxLxD, k_land_BxHxMxD), 0.0)
  k_2 = gaussian_kernel(q_land_BxHxMxD, k_land_BxHxMxD)
  k_2 = jnp.where(ok_m & land_ok_BxM[:, None, :, None], k_2, 0.0)
  k_3 = gaussian_kernel(q_land_BxHxMxD, k_BxHxLxD)
  k_3 = jnp.where(land_ok_BxM[:, None, :, None] & mask_BxL[:, None, None, :], k_3, 0.0)
  right_BxHxMxD = jnp.einsum("bhml,bhld->bhmd", k_3, v_BxHxLxD)
  inv = low_rank.iterative_pinv(k_2, pinv_iterations, order=2)
  return jnp.einsum("bhlm,bhmd->bhld", k_1, inv @ right_BxHxMxD)


@dataclasses.dataclass(frozen=True)
class SoftKnobs:
  """SOFT's knobs (the MRA paper's LRA configs: 64 landmarks).

  Attributes:
    num_landmarks: m, the bottleneck: landmarks per (batch, head), >= 1 (64 in the MRA
      paper's configs); each stands for a segment of ceil(L / m) tokens ("conv": of
      ceil(max_length / m)).
    pinv_iterations: Newton-Schulz iterations of the pseudo-inverse, >= 1 (20, SOFT's
      maximum, as the MRA paper's configs).
    landmark_pooling: "conv" (SOFT's learned strided convolution + LayerNorm + GELU, as
      SOFT and the MRA paper's configs) or "mean" (masked segment means).
    tie_qk: use the queries as keys (SOFT's one projection; True as the MRA paper's
      configs), else the given keys.
    conv_kernel_size: taps of the depthwise convolution over V added to the output, >= 0;
      0 = none (the MRA paper's configs use 0, or 33 in the "conv" ones).
  """

  num_landmarks: int = 64
  pinv_iterations: int = 20
  landmark_pooling: str = "conv"
  tie_qk: bool = True
  conv_kernel_size: int = 0

  def __post_init__(self):
    checks.check_int("num_landmarks", self.num_landmarks, minimum=1)
    checks.check_int("pinv_iterations", self.pinv_iterations, minimum=1)
    checks.check_int("conv_kernel_size", self.conv_kernel_size, minimum=0)
    checks.check_choice("landmark_pooling", self.landmark_pooling, LANDMARK_POOLINGS)


class SoftAttention(nnx.Module):
  """Registry module for SOFT (knobs in `SoftKnobs`)."""

  Knobs = SoftKnobs

  def __init__(
    self,
    knobs: SoftKnobs,
    *,
    num_heads: int,
    head_dim: int,
    max_length: int,
    rngs: nnx.Rngs,
  ):
    checks.check_int("max_length", max_length, minimum=1)
    self.knobs, self.max_length = knobs, max_length
    # Drawn before the landmark convolution: the order seeded models were made with.
    self.conv = (
      low_rank.DepthwiseConv(num_heads, knobs.conv_kernel_size, rngs)
      if knobs.conv_kernel_size
      else None
    )
    if knobs.landmark_pooling == "conv":
      segment = -(-max_length // knobs.num_landmarks)
      fan_in = segment * head_dim
      bound = 1.0 / math.sqrt(fan_in)
      self.pool_kernel_SxDxD = nnx.Param(
        jax.random.uniform(rngs.params(), (segment, head_dim, head_dim), jnp.float32, -bound, bound)
      )
      self.pool_bias_D = nnx.Param(jnp.zeros((head_dim,), jnp.float32))
      self.pool_norm = nnx.LayerNorm(head_dim, param_dtype=jnp.float32, rngs=rngs)

  def _landmarks(self, x_BxHxLxD, mask_BxL, segment):
    if self.knobs.landmark_pooling == "mean":
      return low_rank.segment_means(x_BxHxLxD, mask_BxL, segment)
    b, h, _, d = x_BxHxLxD.shape
    w_SxDxD = self.pool_kernel_SxDxD[...]
    x = working_layout.pad_axis(
      jnp.where(mask_BxL[:, None, :, None], x_BxHxLxD, 0.0), segment, axis=2
    )
    counts = jnp.sum(
      working_layout.pad_axis(mask_BxL.astype(jnp.float32), segment, axis=1).reshape(
        b, -1, segment
      ),
      axis=-1,
    )
    x = x.reshape(b, h, -1, segment, d)
    y = jnp.einsum("bhnsd,sde->bhne", x, w_SxDxD) + self.pool_bias_D[...][None, None, None]
    return jax.nn.gelu(self.pool_norm(y)), counts

  def __call__(self, query, key, value, mask=None) -> jax.Array:
    if self.knobs.tie_qk:
      key = query
    q, k, v, m = working_layout.prepare(query, key, value, mask)
    length = q.shape[2]
    if self.knobs.landmark_pooling == "conv" and length > self.max_length:
      raise ValueError(
        f"SOFT's conv landmarks are sized for max_length={self.max_length}; "
        f"got an input of length {length}"
      )
    scale = q.shape[-1] ** -0.25
    q, k = q * scale, k * scale
    if self.knobs.landmark_pooling == "conv":
      segment = self.pool_kernel_SxDxD.shape[0]
    else:
      segment = -(-length // self.knobs.num_landmarks)
    q_land, counts = self._landmarks(q, m, segment)
    k_land = q_land if self.knobs.tie_qk else self._landmarks(k, m, segment)[0]
    o = soft_core(
      q, k, v, m, q_land, k_land, counts > 0, pinv_iterations=self.knobs.pinv_iterations
    )
    if self.conv is not None:
      o = o + self.conv(v)
    return working_layout.finish(o, m, query.dtype)
