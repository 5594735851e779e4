"""Pieces shared by the low-rank and kernelised attentions of this package.

Masked segment means (Nystromformer and SOFT landmarks, AdaMRA pooling), the iterative
Moore-Penrose pseudo-inverse, the depthwise convolution over V (Nystromformer's, SOFT's
and YOSO's skip connection), and linear (kernelised) attention.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mra_jax import checks
from mra_jax.attentions import working_layout


def segment_means(x_BxHxLxD: jax.Array, mask_BxL: jax.Array, segment: int):
  """Means of the real tokens in consecutive segments of `segment` tokens.

  L is zero-padded to a multiple of `segment`; padded and masked tokens are not
  counted, so garbage or padding never moves a mean.

  Returns:
    means_BxHxNxD float32 (0 for an empty segment), counts_BxN float32 (real tokens
    per segment), N = ceil(L / segment).
  """
  b, h, _, d = x_BxHxLxD.shape
  x = working_layout.pad_axis(
    jnp.where(mask_BxL[:, None, :, None], x_BxHxLxD, 0.0), segment, axis=2
  )
  m = working_layout.pad_axis(mask_BxL.astype(jnp.float32), segment, axis=1)
  n = x.shape[2] // segment
  sums_BxHxNxD = jnp.sum(x.reshape(b, h, n, segment, d), axis=3)
  counts_BxN = jnp.sum(m.reshape(b, n, segment), axis=2)
  safe = jnp.where(counts_BxN > 0, counts_BxN, 1.0)[:, None, :, None]
  return sums_BxHxNxD / safe, counts_BxN


def iterative_pinv(a_BxHxMxM: jax.Array, iterations: int, *, order: int = 3) -> jax.Array:
  """Moore-Penrose pseudo-inverse by matrix iterations (no SVD, so it runs on any backend).

  Start Z0 = A^T / (||A||_1 ||A||_inf) (per batch and head), which makes the iteration
  converge for any A. `order=3` is Nystromformer's cubic iteration
  Z <- Z (13 I - AZ (15 I - AZ (7 I - AZ))) / 4; `order=2` is the Newton-Schulz
  iteration Z <- 2Z - Z A Z that SOFT uses. Zero rows or columns of A (masked
  landmarks) stay zero columns or rows of Z, as in the true pseudo-inverse.
  """
  a = a_BxHxMxM.astype(jnp.float32)
  col = jnp.max(jnp.sum(jnp.abs(a), axis=-2), axis=-1)
  row = jnp.max(jnp.sum(jnp.abs(a), axis=-1), axis=-1)
  scale = col * row
  scale = jnp.where(scale > 0, scale, 1.0)[..., None, None]
  z = jnp.swapaxes(a, -1, -2) / scale
  eye = jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=jnp.float32), a.shape)
  for _ in range(iterations):
    az = a @ z
    if order == 3:
      z = 0.25 * z @ (13.0 * eye - az @ (15.0 * eye - az @ (7.0 * eye - az)))
    else:
      z = 2.0 * z - z @ az
  return z


class DepthwiseConv(nnx.Module):
  """Per-head 1-D convolution along L over V (Nystromformer's / YOSO's conv skip).

  One kernel of `kernel_size` taps per head, shared by the D channels (the published
  Conv2d(heads, heads, (k, 1), groups=heads)). 'same' zero padding; masked positions
  are zero before the convolution, so padding contributes nothing.
  """

  def __init__(self, num_heads: int, kernel_size: int, rngs: nnx.Rngs):
    checks.check_int("conv_kernel_size", kernel_size, minimum=1)
    bound = 1.0 / math.sqrt(kernel_size)  # PyTorch's Conv default, fan_in = k.
    self.weight_HxK = nnx.Param(
      jax.random.uniform(rngs.params(), (num_heads, kernel_size), jnp.float32, -bound, bound)
    )

  def __call__(self, v_BxHxLxD: jax.Array) -> jax.Array:
    w_HxK = self.weight_HxK[...]
    k = w_HxK.shape[1]
    padded = jnp.pad(v_BxHxLxD, ((0, 0), (0, 0), (k // 2, (k - 1) // 2), (0, 0)))
    length = v_BxHxLxD.shape[2]
    out = jnp.zeros_like(v_BxHxLxD)
    for t in range(k):  # k shifted adds: O(L k D), no im2col copy of V.
      out = out + w_HxK[None, :, t, None, None] * padded[:, :, t : t + length]
    return out


def linear_attention(
  phi_q_BxHxLxF: jax.Array, phi_k_BxHxLxF: jax.Array, v_BxHxLxD: jax.Array, *, eps: float = 0.0
) -> jax.Array:
  """Kernelised attention phi(q) [sum_k phi(k) v^T] / (phi(q) . sum_k phi(k)).

  Features must be >= 0 and 0 at padded keys. A row whose normaliser is <= eps (no
  real key, or a feature map that vanished) gets 0, never NaN. O(L F D).
  """
  kv_BxHxFxD = jnp.einsum("bhlf,bhld->bhfd", phi_k_BxHxLxF, v_BxHxLxD)
  z_BxHxF = jnp.sum(phi_k_BxHxLxF, axis=2)
  num = jnp.einsum("bhlf,bhfd->bhld", phi_q_BxHxLxF, kv_BxHxFxD)
  den = jnp.einsum("bhlf,bhf->bhl", phi_q_BxHxLxF, z_BxHxF)[..., None]
  ok = den > eps
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)
