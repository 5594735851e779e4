"""YOSO: collision probabilities, the sampled estimator's expectation, and its gradients."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mra_jax import attentions
from mra_jax.attentions import working_layout, yoso


def _unit(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def test_collision_frequency_matches_the_closed_form():
  tau, hashes, d = 4, 4000, 8
  a = jnp.zeros((d,)).at[0].set(1.0)
  angles = np.array([0.3, 1.0, 1.6, 2.5])
  b = jnp.stack([jnp.zeros((d,)).at[0].set(np.cos(t)).at[1].set(np.sin(t)) for t in angles])
  x = jnp.concatenate([a[None], b])[None, None]  # [1, 1, 5, D]
  planes = jax.random.normal(jax.random.key(0), (1, hashes, tau, d))
  codes = jax.jit(yoso.hash_codes)(x, planes)[0, 0]  # [M, 5]
  freq = np.mean(np.asarray(codes[:, 1:] == codes[:, :1]), axis=0)
  expect = (1 - angles / np.pi) ** tau
  np.testing.assert_allclose(freq, expect, atol=3.5 * np.sqrt(0.25 / hashes))
  np.testing.assert_allclose(yoso.collision_probability(jnp.cos(angles), tau), expect, rtol=1e-5)


def _setup(length=24, hashes=2000, tau=3, samples=8, seed=0):
  q, k, v = jax.random.normal(jax.random.key(seed), (3, 1, length, 2, 8))
  mask = jnp.arange(length)[None, :] < length - 5
  planes = jax.random.normal(jax.random.key(1), (2, hashes, tau, 8))
  signs = jax.random.rademacher(jax.random.key(2), (2, hashes, samples, 8), jnp.float32)
  return q, k, v, mask, planes, signs


def test_sampled_output_converges_to_the_expectation_form():
  q, k, v, mask, planes, signs = _setup()
  fn = jax.jit(functools.partial(yoso.yoso_attention, normalize_output=False))
  sampled = fn(q, k, v, mask, planes=planes, signs=signs)
  qp, kp, vp, m = working_layout.prepare(q, k, v, mask)
  unit = yoso._unit  # pylint: disable=protected-access
  expect = working_layout.finish(
    yoso.yoso_expectation(unit(qp), unit(kp), vp, m, 3), m, jnp.float32
  )
  err = jnp.max(jnp.abs(sampled - expect)) / jnp.max(jnp.abs(expect))
  assert float(err) < 0.08


def test_lsh_backward_estimates_the_kappa_w_gradient():
  # The linear backward estimates: grad_v exact for the sampled estimator (-> expectation),
  # grad_q = kappa sum_k w(q,k) (g.v_k) k and symmetric grad_k, kappa = 2 tau / pi.
  tau = 3
  q, k, v, mask, planes, signs = _setup(tau=tau)
  qp, kp, vp, m = working_layout.prepare(q, k, v, mask)
  qn, kn = yoso._unit(qp), yoso._unit(kp)  # pylint: disable=protected-access
  g = jax.random.normal(jax.random.key(5), qn.shape) * m[:, None, :, None]
  _, vjp = jax.vjp(lambda a, b, c: yoso.lsh_cumulation(a, b, c, m, planes, signs, tau), qn, kn, vp)
  gq, gk, gv = jax.jit(vjp)(g)
  w = yoso.collision_probability(jnp.einsum("bhld,bhkd->bhlk", qn, kn), tau)
  w = w * m[:, None, None, :]
  gdotv = jnp.einsum("bhld,bhkd->bhlk", g, vp)
  kappa = 2 * tau / math.pi
  expect_q = kappa * jnp.einsum("bhlk,bhlk,bhkd->bhld", w, gdotv, kn)
  expect_k = kappa * jnp.einsum("bhlk,bhlk,bhld->bhkd", w, gdotv, qn)
  expect_v = jnp.einsum("bhlk,bhld->bhkd", w, g)
  rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
  assert rel(gv, expect_v) < 0.05
  assert rel(gq, expect_q) < 0.2
  assert rel(gk, expect_k) < 0.2


@pytest.mark.slow  # many sampled gradients
def test_expectation_backward_is_the_expectation_gradient():
  q, k, v, mask, planes, signs = _setup(hashes=8)
  loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

  def via_module(q, k, v):
    return yoso.yoso_attention(
      q, k, v, mask, planes=planes, signs=signs, backward="expectation", normalize_output=False
    )

  grads = jax.jit(jax.grad(loss(via_module), argnums=(0, 1, 2)))(q, k, v)
  # Reference: the same cotangent pushed through the expectation form by autodiff.
  g = jnp.cos(jax.jit(via_module)(q, k, v))
  unit = yoso._unit  # pylint: disable=protected-access

  def ref(q, k, v):
    qp, kp, vp, m = working_layout.prepare(q, k, v, mask)
    return working_layout.finish(
      yoso.yoso_expectation(unit(qp), unit(kp), vp, m, planes.shape[2]), m, jnp.float32
    )

  _, vjp = jax.vjp(ref, q, k, v)
  for got, want in zip(grads, vjp(g)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_redraw_and_knob_errors():
  # The registry test's shape: the jitted draw is already compiled.
  layer = attentions.build(
    "yoso", num_heads=2, head_dim=16, max_length=16, rngs=nnx.Rngs(0), num_hash=4
  )
  before = np.asarray(layer.planes[...])
  layer.redraw(nnx.Rngs(1))
  assert not np.allclose(before, layer.planes[...])
  with pytest.raises(ValueError, match="hash_code_len=0"):
    attentions.build(
      "yoso", num_heads=2, head_dim=8, max_length=16, rngs=nnx.Rngs(0), hash_code_len=0
    )
  with pytest.raises(ValueError, match="backward='exact'"):
    attentions.build(
      "yoso", num_heads=2, head_dim=8, max_length=16, rngs=nnx.Rngs(0), backward="exact"
    )
