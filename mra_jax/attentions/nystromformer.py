"""Nystromformer (Xiong et al., AAAI 2021): Nystrom approximation of softmax attention.

With landmarks q~, k~ (means of consecutive segments of the queries and keys),

    A ~ softmax(q k~^T) pinv(softmax(q~ k~^T)) softmax(q~ k^T),

the pseudo-inverse computed by Nystromformer's cubic matrix iteration (6 iterations), plus
an optional depthwise convolution over V (kernel 33 in the MRA paper's "conv" config). Cost
O(L m D) for m landmarks.

Length rules: segments are ceil(L / m) tokens (L need not be a multiple of m; the last
segment may be short) and each landmark is the mean of the *real* tokens of its segment (an
all-padding segment gives no landmark). When m >= L every token is its own landmark and the
approximation is exact: then the method computes exact softmax attention directly (what the
Nystrom formula with an exact pseudo-inverse gives), instead of inverting an L x L matrix.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from mra_jax import checks
from mra_jax.attentions import low_rank, softmax, working_layout
from mra_jax.knobs import takes_knobs


def nystrom_core(
  q_BxHxLxD, k_BxHxLxD, v_BxHxLxD, mask_BxL, *, num_landmarks: int, pinv_iterations: int
) -> jax.Array:
  """The Nystrom approximation on float32 [B, H, L, D] inputs (padding already zeroed)."""
  length, d = q_BxHxLxD.shape[2], q_BxHxLxD.shape[3]
  scale = d**-0.25  # Split between q and k, so the landmarks see scaled tokens.
  q, k = q_BxHxLxD * scale, k_BxHxLxD * scale
  segment = -(-length // num_landmarks)
  q_land, counts_BxM = low_rank.segment_means(q, mask_BxL, segment)
  k_land, _ = low_rank.segment_means(k, mask_BxL, segment)
  land_ok_BxM = counts_BxM > 0
  kernel_1, _ = softmax.masked_softmax(
    jnp.einsum("bhld,bhmd->bhlm", q, k_land), land_ok_BxM[:, None, None, :]
  )
  kernel_2, _ = softmax.masked_softmax(
    jnp.einsum("bhnd,bhmd->bhnm", q_land, k_land), land_ok_BxM[:, None, None, :]
  )
  kernel_2 = jnp.where(land_ok_BxM[:, None, :, None], kernel_2, 0.0)
  kernel_3, _ = softmax.masked_softmax(
    jnp.einsum("bhmd,bhld->bhml", q_land, k), mask_BxL[:, None, None, :]
  )
  kernel_3 = jnp.where(land_ok_BxM[:, None, :, None], kernel_3, 0.0)
  kernel_2_inv = low_rank.iterative_pinv(kernel_2, pinv_iterations, order=3)
  right_BxHxMxD = jnp.einsum("bhml,bhld->bhmd", kernel_3, v_BxHxLxD)
  return jnp.einsum("bhlm,bhmd->bhld", kernel_1, kernel_2_inv @ right_BxHxMxD)


@dataclasses.dataclass(frozen=True)
class NystromformerKnobs:
  """Nystromformer's knobs (the MRA paper's LRA configs: 64 landmarks, 6 iterations).

  Attributes:
    num_landmarks: m, landmarks per (batch, head), >= 1 (64 in the MRA paper's configs);
      each is the mean of the real tokens of a segment of ceil(L / m) tokens, and m >= L
      gives exact softmax.
    pinv_iterations: iterations of the cubic pseudo-inverse iteration, >= 1 (6 in the MRA
      paper's configs).
    conv_kernel_size: taps of the depthwise convolution over V added to the output, >= 0;
      0 = none (the MRA paper's configs use 0, or 33 in the "conv" ones). Its weights are
      parameters, so only `NystromformerAttention` has it.
  """

  num_landmarks: int = 64
  pinv_iterations: int = 6
  conv_kernel_size: int = 0

  def __post_init__(self):
    checks.check_int("num_landmarks", self.num_landmarks, minimum=1)
    checks.check_int("pinv_iterations", self.pinv_iterations, minimum=1)
    checks.check_int("conv_kernel_size", self.conv_kernel_size, minimum=0)


@takes_knobs(NystromformerKnobs, param="knobs")
def nystromformer_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  mask: jax.Array | None = None,
  *,
  knobs: NystromformerKnobs,
) -> jax.Array:
  """Nystromformer attention without the conv skip (see the module docstring).

  Args:
    query: [B, L, H, D] float32 / bfloat16 / float16.
    key: [B, L, H, D].
    value: [B, L, H, Dv].
    mask: optional [B, L] bool or 0/1, True = real token.
    knobs: `NystromformerKnobs` (or its fields as keywords: num_landmarks,
      pinv_iterations); conv_kernel_size must be 0 (the conv skip has parameters).

  Returns:
    [B, L, H, Dv] in query's dtype; padded queries are 0.

  Raises:
    ValueError: bad shapes or knobs, or a conv skip asked of the function.
  """
  if knobs.conv_kernel_size:
    raise ValueError(
      "nystromformer_attention has no conv skip (its weights are parameters; use "
      f"NystromformerAttention); got conv_kernel_size={knobs.conv_kernel_size!r}"
    )
  q, k, v, m = working_layout.prepare(query, key, value, mask)
  o = _attend(q, k, v, m, knobs.num_landmarks, knobs.pinv_iterations)
  return working_layout.finish(o, m, query.dtype)


def _attend(q, k, v, m, num_landmarks, pinv_iterations):
  if num_landmarks >= q.shape[2]:
    logits = jnp.einsum("bhld,bhkd->bhlk", q, k) / math.sqrt(q.shape[-1])
    p, _ = softmax.masked_softmax(logits, m[:, None, None, :])
    return jnp.einsum("bhlk,bhkd->bhld", p, v)
  return nystrom_core(q, k, v, m, num_landmarks=num_landmarks, pinv_iterations=pinv_iterations)


class NystromformerAttention(nnx.Module):
  """Registry module for Nystromformer (knobs in `NystromformerKnobs`)."""

  Knobs = NystromformerKnobs

  def __init__(
    self,
    knobs: NystromformerKnobs,
    *,
    num_heads: int,
    head_dim: int,
    max_length: int,
    rngs: nnx.Rngs,
  ):
    del head_dim, max_length
    self.knobs = knobs
    self.conv = (
      low_rank.DepthwiseConv(num_heads, knobs.conv_kernel_size, rngs)
      if knobs.conv_kernel_size
      else None
    )

  def __call__(self, query, key, value, mask=None) -> jax.Array:
    q, k, v, m = working_layout.prepare(query, key, value, mask)
    o = _attend(q, k, v, m, self.knobs.num_landmarks, self.knobs.pinv_iterations)
    if self.conv is not None:
      o = o + self.conv(v)
    return working_layout.finish(o, m, query.dtype)
