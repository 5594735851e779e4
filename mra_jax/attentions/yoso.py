"""YOSO (Zeng et al., ICML 2021): attention as LSH Bernoulli sampling, O(L m D).

For unit-norm q and k the attention weight is the collision probability of a tau-bit
SimHash code (tau random hyperplanes): w(q, k) = (1 - arccos(q.k) / pi)^tau. The variant
here is YOSO's sampled one ("YOSO-m"): m hash functions each put every key's value in the
bucket of its code, every query reads its own bucket, and the m reads are averaged,

    out_q = (1/m) sum_hashes sum_k 1[h(q) = h(k)] v_k,    E[out_q] = sum_k w(q, k) v_k,

which is linear in L (a 2^tau-bucket table per hash; tau = 8, m = 16 by default, tau = 10-12
in the per-task LRA configs). `yoso_expectation` is the expectation form (quadratic, used by
the tests and by `backward="expectation"`). Like the YOSO code, the output rows are
l2-normalised (`normalize_output`) and an optional depthwise conv over V is added first.

Gradient. The sampled estimator is piecewise constant in q and k, so autodiff would give
them zero gradient. `backward="lsh"` (default) keeps the cost linear: V gets the exact
gradient of the sampled estimator, and q, k get an LSH estimate of the gradient of the
expectation with dw/dc approximated by kappa * w, kappa = 2 tau / pi (exact for orthogonal
q, k, the typical case in high dimension; YOSO approximates this derivative the same way,
proportional to w). The factor (g_q . v_k) of that gradient is estimated with
`grad_samples` Rademacher vectors per hash (unbiased), so no [buckets, D, D] table is built.
`backward="expectation"` uses the exact gradient of the expectation form (O(L^2)).

The hash hyperplanes are drawn once at construction (fixed, not trained); YOSO redraws
them for every batch: call `YosoAttention.redraw(rngs)` from the training loop to do so.
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

BACKWARDS = ("lsh", "expectation")


def collision_probability(cos: jax.Array, hash_code_len: int) -> jax.Array:
  """(1 - arccos(cos) / pi)^tau, the probability that two tau-bit SimHash codes agree."""
  return (1.0 - jnp.arccos(jnp.clip(cos, -1.0, 1.0)) / jnp.pi) ** hash_code_len


def hash_codes(x_BxHxLxD: jax.Array, planes_HxMxTxD: jax.Array) -> jax.Array:
  """SimHash codes [B, H, M, L] int32 in [0, 2^T): bit t = sign of the t-th hyperplane."""
  bits = jnp.einsum("bhld,hmtd->bhmlt", x_BxHxLxD, planes_HxMxTxD) > 0
  powers = 2 ** jnp.arange(planes_HxMxTxD.shape[2], dtype=jnp.int32)
  return jnp.sum(jnp.where(bits, powers, 0), axis=-1)


def _bucket_reads(codes_from_BxHxMxL, codes_to_BxHxMxL, values_fn, num_buckets: int):
  """sum over hashes i of table_i[code_to], table_i[c] = sum_{code_from = c} values_fn(i).

  One hash at a time (scan), so the working set is one [B*H, buckets, F] table.
  """
  b, h, m, length = codes_from_BxHxMxL.shape
  bh_offset = (jnp.arange(b * h, dtype=jnp.int32) * num_buckets).reshape(b, h, 1)

  def one_hash(acc, i):
    vals_BxHxLxF = values_fn(i)
    f = vals_BxHxLxF.shape[-1]
    ids = (
      jax.lax.dynamic_index_in_dim(codes_from_BxHxMxL, i, 2, keepdims=False) + bh_offset
    ).reshape(-1)
    table = jax.ops.segment_sum(vals_BxHxLxF.reshape(-1, f), ids, num_segments=b * h * num_buckets)
    read = (
      jax.lax.dynamic_index_in_dim(codes_to_BxHxMxL, i, 2, keepdims=False) + bh_offset
    ).reshape(-1)
    return acc + table[read].reshape(b, h, length, f), None

  f = jax.eval_shape(values_fn, 0).shape[-1]
  acc, _ = jax.lax.scan(one_hash, jnp.zeros((b, h, length, f), jnp.float32), jnp.arange(m))
  return acc


def _sampled(q_BxHxLxD, k_BxHxLxD, v_BxHxLxD, kmask_BxL, planes, signs, tau):
  del signs, tau
  num_buckets = 2 ** planes.shape[2]
  cq, ck = hash_codes(q_BxHxLxD, planes), hash_codes(k_BxHxLxD, planes)
  vals = jnp.where(kmask_BxL[:, None, :, None], v_BxHxLxD, 0.0)
  return _bucket_reads(ck, cq, lambda i: vals, num_buckets) / planes.shape[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def lsh_cumulation(q, k, v, kmask, planes, signs, tau):
  """Sampled YOSO read-out on unit-norm float32 [B, H, L, D] q, k (see module docstring)."""
  return _sampled(q, k, v, kmask, planes, signs, tau)


def _fwd(q, k, v, kmask, planes, signs, tau):
  return _sampled(q, k, v, kmask, planes, signs, tau), (q, k, v, kmask, planes, signs)


def _bwd(tau, res, g_BxHxLxD):
  q, k, v, kmask, planes, signs = res
  m, num_buckets = planes.shape[1], 2 ** planes.shape[2]
  kmask_f = kmask[:, None, :, None].astype(jnp.float32)
  cq, ck = hash_codes(q, planes), hash_codes(k, planes)
  grad_v = _bucket_reads(cq, ck, lambda i: g_BxHxLxD, num_buckets) * kmask_f / m
  r_samples = signs.shape[2]
  kappa = 2.0 * tau / math.pi
  coef = kappa / (m * r_samples)

  def proj(x_BxHxLxD, i):  # [B, H, L, R]: x . r for this hash's sign vectors.
    return jnp.einsum(
      "bhld,hrd->bhlr", x_BxHxLxD, jax.lax.dynamic_index_in_dim(signs, i, 1, keepdims=False)
    )

  def outer(a_BxHxLxR, x_BxHxLxD):  # [B, H, L, R*D]: a_r * x for every sample r.
    return (a_BxHxLxR[..., :, None] * x_BxHxLxD[..., None, :]).reshape(x_BxHxLxD.shape[:3] + (-1,))

  b, h, length, d = q.shape
  grad_q, grad_k = jnp.zeros_like(q), jnp.zeros_like(k)
  bh_offset = (jnp.arange(b * h, dtype=jnp.int32) * num_buckets).reshape(b, h, 1)

  def one_hash(carry, i):
    gq, gk = carry
    cqi = jax.lax.dynamic_index_in_dim(cq, i, 2, keepdims=False) + bh_offset
    cki = jax.lax.dynamic_index_in_dim(ck, i, 2, keepdims=False) + bh_offset
    rv_BxHxLxR = proj(v, i) * kmask_f
    rg_BxHxLxR = proj(g_BxHxLxD, i)
    # grad_q: sum_r (g_q.r) T_r[h(q)], T_r[c] = sum_{h(k)=c} (r.v_k) k; grad_k symmetric.
    t_table = jax.ops.segment_sum(
      outer(rv_BxHxLxR, k * kmask_f).reshape(-1, r_samples * d),
      cki.reshape(-1),
      num_segments=b * h * num_buckets,
    )
    t_q = t_table[cqi.reshape(-1)].reshape(b, h, length, r_samples, d)
    gq = gq + jnp.einsum("bhlr,bhlrd->bhld", rg_BxHxLxR, t_q)
    u_table = jax.ops.segment_sum(
      outer(rg_BxHxLxR, q).reshape(-1, r_samples * d),
      cqi.reshape(-1),
      num_segments=b * h * num_buckets,
    )
    u_k = u_table[cki.reshape(-1)].reshape(b, h, length, r_samples, d)
    gk = gk + jnp.einsum("bhlr,bhlrd->bhld", rv_BxHxLxR, u_k)
    return (gq, gk), None

  (grad_q, grad_k), _ = jax.lax.scan(one_hash, (grad_q, grad_k), jnp.arange(m))
  return (grad_q * coef, grad_k * coef, grad_v, None, None, None)


lsh_cumulation.defvjp(_fwd, _bwd)


def yoso_expectation(q_BxHxLxD, k_BxHxLxD, v_BxHxLxD, kmask_BxL, tau: int) -> jax.Array:
  """sum_k w(q, k) v_k over real keys, w the collision probability; O(L^2), unit-norm inputs."""
  cos = jnp.einsum("bhld,bhkd->bhlk", q_BxHxLxD, k_BxHxLxD)
  # Clipped away from +-1: arccos' derivative is infinite there (q == k in tied attention).
  w = collision_probability(jnp.clip(cos, -1.0 + 1e-6, 1.0 - 1e-6), tau)
  w = jnp.where(kmask_BxL[:, None, None, :], w, 0.0)
  return jnp.einsum("bhlk,bhkd->bhld", w, v_BxHxLxD)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _sampled_expectation_grad(q, k, v, kmask, planes, signs, tau):
  return _sampled(q, k, v, kmask, planes, signs, tau)


def _fwd_e(q, k, v, kmask, planes, signs, tau):
  return _sampled(q, k, v, kmask, planes, signs, tau), (q, k, v, kmask)


def _bwd_e(tau, res, g):
  q, k, v, kmask = res
  _, vjp = jax.vjp(lambda a, b, c: yoso_expectation(a, b, c, kmask, tau), q, k, v)
  return (*vjp(g), None, None, None)


_sampled_expectation_grad.defvjp(_fwd_e, _bwd_e)


def _unit(x_BxHxLxD):
  sq = jnp.sum(jnp.square(x_BxHxLxD), axis=-1, keepdims=True)
  # sqrt's derivative is infinite at 0: keep zero rows (padding) off it, or grads are NaN.
  return x_BxHxLxD * jnp.where(sq > 0, jax.lax.rsqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def yoso_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  mask: jax.Array | None = None,
  *,
  planes: jax.Array,
  signs: jax.Array,
  backward: str = "lsh",
  normalize_output: bool = True,
  conv_out: jax.Array | None = None,
) -> jax.Array:
  """YOSO attention with given hash hyperplanes (see the module docstring).

  Args:
    query: [B, L, H, D] float32 / bfloat16 / float16.
    key: [B, L, H, D].
    value: [B, L, H, Dv].
    mask: optional [B, L] bool or 0/1, True = real token.
    planes: [H, M, tau, D] hash hyperplanes (M hashes of tau bits per head).
    signs: [H, M, R, Dv] +-1 vectors of the "lsh" backward's estimator.
    backward: "lsh" (linear) or "expectation" (exact expectation gradient, O(L^2)).
    normalize_output: l2-normalise each output row (the YOSO code does).
    conv_out: optional [B, H, L, Dv] float32 conv skip added before the normalisation.

  Returns:
    [B, L, H, Dv] in query's dtype; padded queries are 0.
  """
  checks.check_choice("backward", backward, BACKWARDS)
  q, k, v, m = working_layout.prepare(query, key, value, mask)
  if planes.ndim != 4 or planes.shape[0] != q.shape[1] or planes.shape[3] != q.shape[3]:
    raise ValueError(
      f"planes must be [H, M, tau, D] = [{q.shape[1]}, M, tau, {q.shape[3]}]; "
      f"got planes.shape={planes.shape}"
    )
  fn = lsh_cumulation if backward == "lsh" else _sampled_expectation_grad
  o = fn(_unit(q), _unit(k), v, m, planes, signs, planes.shape[2])
  if conv_out is not None:
    o = o + conv_out
  if normalize_output:
    o = _unit(o)
  return working_layout.finish(o, m, query.dtype)


@functools.partial(jax.jit, static_argnums=1)
def _draw(random_key, shape):
  h, m, tau, d, r = shape
  k_planes, k_signs = jax.random.split(random_key)
  return (
    jax.random.normal(k_planes, (h, m, tau, d), jnp.float32),
    jax.random.rademacher(k_signs, (h, m, r, d), jnp.float32),
  )


@dataclasses.dataclass(frozen=True)
class YosoKnobs:
  """YOSO's knobs (the MRA paper's LRA configs: 16 hashes; their code length is per task).

  Attributes:
    hash_code_len: tau, bits per hash (hyperplanes per hash), 1 to 20 (8 here; the MRA
      paper's per-task LRA configs use 10 to 12, set by the LRA configs); each hash has a
      2^tau-bucket table.
    num_hash: m, hash functions averaged, >= 1 (16 in the MRA paper's configs).
    backward: "lsh" (linear-cost LSH estimate of the expectation's gradient, the default)
      or "expectation" (its exact gradient, O(L^2)); our design, see the module docstring.
    grad_samples: Rademacher vectors per hash of the "lsh" backward's estimator, >= 1 (4;
      the estimator is ours, so no paper value).
    normalize_output: l2-normalise each output row (True, as the YOSO code does).
    conv_kernel_size: taps of the depthwise convolution over V added to the output, >= 0;
      0 = none (the MRA paper's configs use 0, or 33 in the "conv" ones).
  """

  hash_code_len: int = 8
  num_hash: int = 16
  backward: str = "lsh"
  grad_samples: int = 4
  normalize_output: bool = True
  conv_kernel_size: int = 0

  def __post_init__(self):
    checks.check_int("hash_code_len", self.hash_code_len, minimum=1)
    if self.hash_code_len > 20:  # A 2^tau table per hash: refuse sizes that cannot be meant.
      raise ValueError(f"hash_code_len must be <= 20; got hash_code_len={self.hash_code_len}")
    checks.check_int("num_hash", self.num_hash, minimum=1)
    checks.check_int("grad_samples", self.grad_samples, minimum=1)
    checks.check_int("conv_kernel_size", self.conv_kernel_size, minimum=0)
    checks.check_choice("backward", self.backward, BACKWARDS)


class YosoAttention(nnx.Module):
  """Registry module for YOSO; owns its fixed, redrawable hash hyperplanes (knobs: `YosoKnobs`)."""

  Knobs = YosoKnobs

  def __init__(
    self,
    knobs: YosoKnobs,
    *,
    num_heads: int,
    head_dim: int,
    max_length: int,
    rngs: nnx.Rngs,
  ):
    del max_length
    self.knobs = knobs
    m, tau = knobs.num_hash, knobs.hash_code_len
    self.shape = (num_heads, m, tau, head_dim, knobs.grad_samples)
    self.planes = hash_random.FixedRandom(jnp.zeros((num_heads, m, tau, head_dim)))
    self.signs = hash_random.FixedRandom(jnp.zeros((num_heads, m, knobs.grad_samples, head_dim)))
    self.redraw(rngs)
    self.conv = (
      low_rank.DepthwiseConv(num_heads, knobs.conv_kernel_size, rngs)
      if knobs.conv_kernel_size
      else None
    )

  def redraw(self, rngs: nnx.Rngs) -> None:
    """Draws new hash hyperplanes (YOSO samples new hashes for every batch)."""
    self.planes[...], self.signs[...] = _draw(rngs.params(), self.shape)

  def __call__(self, query, key, value, mask=None) -> jax.Array:
    conv_out = None
    if self.conv is not None:
      _, _, v, _m = working_layout.prepare(query, key, value, mask)
      conv_out = self.conv(v)
    return yoso_attention(
      query,
      key,
      value,
      mask,
      planes=self.planes[...],
      signs=self.signs[...],
      backward=self.knobs.backward,
      normalize_output=self.knobs.normalize_output,
      conv_out=conv_out,
    )
