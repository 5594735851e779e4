"""Tests of Scatterbrain (exact window + Performer features off the window)."""
# pylint: disable=invalid-name

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from mra_jax import attentions
from mra_jax.attentions import scatterbrain as sb

from . import sparse_testing  # pylint: disable=relative-beyond-top-level

B, L, H, D = 2, 45, 2, 8
_P = sb.orthogonal_random_features(jax.random.key(7), 64, D)

# One compilation per knob setting, shared by every test in this file.
_sb = jax.jit(sb.scatterbrain_attention, static_argnames=("window_size",))


def _qkv(length=L, seed=0):
  return sparse_testing.random_qkv(B, length, H, D, seed=seed)


def _mask(length=L):
  return sparse_testing.two_row_mask(length, 12)


def _features(q, k, mask, projection):
  to_bhld = lambda x: jnp.transpose(x, (0, 2, 1, 3))
  phi_q, a_q = sb.performer_features(to_bhld(q), projection, mask, is_query=True)
  phi_k, a_k = sb.performer_features(to_bhld(k), projection, mask, is_query=False)
  return phi_q, phi_k, a_q + a_k


@jax.jit
def _dense_oracle(q, k, v, mask, window_size):
  """Oracle: exact exp(s) inside the window, phi_q . phi_k outside, one normaliser."""
  phi_q, phi_k, log_scale = _features(q, k, mask, _P)
  low_rank = jnp.einsum("bhlm,bhkm->bhlk", phi_q, phi_k) * jnp.exp(log_scale)
  exact = jnp.exp(jnp.einsum("blhd,bkhd->bhlk", q, k) / np.sqrt(D))
  offset = jnp.arange(L)[None, :] - jnp.arange(L)[:, None]
  window = (offset >= -(window_size // 2)) & (offset < (window_size + 1) // 2)
  a = jnp.where(window[None, None], exact, low_rank) * mask[:, None, None, :]
  o = jnp.einsum("bhlk,bkhd->blhd", a / a.sum(-1, keepdims=True), v)
  return jnp.where(mask[:, :, None, None], o, 0.0)


@jax.jit
def _performer_alone(q, k, v, projection):
  mask = jnp.ones(q.shape[:2], bool)
  phi_q, phi_k, _ = _features(q, k, mask, projection)
  kv = jnp.einsum("bhlm,bkhd->bhmd", phi_k, v)
  o = (
    jnp.einsum("bhlm,bhmd->bhld", phi_q, kv)
    / jnp.einsum("bhlm,bhm->bhl", phi_q, phi_k.sum(2))[..., None]
  )
  return jnp.transpose(o, (0, 2, 1, 3))


class ScatterbrainTest(parameterized.TestCase):
  def test_window_covering_sequence_is_softmax(self):
    q, k, v = _qkv()
    np.testing.assert_allclose(
      _sb(q, k, v, projection=_P, window_size=2 * L + 2),
      sparse_testing.softmax_oracle(q, k, v),
      atol=1e-5,
    )

  @parameterized.parameters(4, 7)
  def test_equals_dense_sparse_plus_low_rank_oracle(self, window_size):
    # The window's low-rank estimate is replaced, not added: no double counting.
    q, k, v = _qkv()
    mask = _mask()
    np.testing.assert_allclose(
      _sb(q, k, v, mask, projection=_P, window_size=window_size),
      _dense_oracle(q, k, v, mask, window_size),
      atol=1e-5,
    )

  def test_beats_performer_alone_on_local_input(self):
    # Tokens carry smooth sinusoidal codes, so ~90% of the softmax mass lies within
    # 16 positions: the window captures it exactly, Performer alone cannot.
    length, d = 256, 16
    freqs = jnp.exp(jnp.linspace(jnp.log(1 / 64), jnp.log(1 / 8), d // 2))
    angle = jnp.arange(length)[:, None] * freqs[None, :] * 2 * jnp.pi
    code = jnp.concatenate([jnp.cos(angle), jnp.sin(angle)], -1)[None, :, None, :]
    projection = sb.orthogonal_random_features(jax.random.key(10), 32, d)
    for seed in range(2):
      rng = np.random.default_rng(seed)
      noise, q_noise, v = (
        jnp.asarray(rng.standard_normal((1, length, 2, d)), jnp.float32) for _ in range(3)
      )
      q, k = 2.0 * code + 0.1 * q_noise, 2.0 * code + 0.1 * noise
      want = sparse_testing.softmax_oracle(q, k, v)
      err = lambda x: float(jnp.linalg.norm(x - want) / jnp.linalg.norm(want))
      e_sb = err(_sb(q, k, v, projection=projection, window_size=32))
      e_performer = err(_performer_alone(q, k, v, projection))
      self.assertLess(e_sb, 0.5 * e_performer)

  def test_padding(self):
    q, k, v = _qkv()
    mask = _mask().at[0, 11].set(False)
    f = lambda q, k, v: _sb(q, k, v, mask, projection=_P, window_size=8)
    out = f(q, k, v)
    garbage = lambda x: jnp.where(mask[:, :, None, None], x, 1e4 * jnp.ones_like(x))
    np.testing.assert_array_equal(out, f(garbage(q), garbage(k), garbage(v)))
    self.assertTrue(np.all(np.asarray(out)[~np.asarray(mask)] == 0))
    all_pad = _sb(q, k, v, jnp.zeros((B, L), bool), projection=_P, window_size=8)
    np.testing.assert_array_equal(all_pad, 0.0)

  def test_bfloat16_finite_and_close(self):
    q, k, v = _qkv()
    mask = _mask()
    got = _sb(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask, projection=_P, window_size=8)
    self.assertEqual(got.dtype, jnp.bfloat16)
    self.assertTrue(jnp.all(jnp.isfinite(got)))
    want = _sb(q, k, v, mask, projection=_P, window_size=8)
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=1e-1)

  def test_grad_matches_dense_oracle_under_jit(self):
    q, k, v = _qkv()
    mask = _mask()
    ct = jnp.asarray(np.random.default_rng(9).standard_normal(q.shape), jnp.float32)
    loss = lambda f: lambda *a: jnp.sum(f(*a) * ct)
    got = jax.jit(
      jax.grad(
        loss(
          lambda q, k, v: sb.scatterbrain_attention(q, k, v, mask, projection=_P, window_size=7)
        ),
        argnums=(0, 1, 2),
      )
    )(q, k, v)
    want = jax.jit(
      jax.grad(loss(lambda q, k, v: _dense_oracle(q, k, v, mask, 7)), argnums=(0, 1, 2))
    )(q, k, v)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, atol=1e-4)

  def test_module_owns_fixed_features(self):
    layer = attentions.build(
      "scatterbrain", num_heads=H, head_dim=32, max_length=64, rngs=nnx.Rngs(0)
    )
    self.assertEqual(layer.projection[...].shape, (110, 32))  # int(32 ln 32) features.
    self.assertEqual(nnx.state(layer, nnx.Param), nnx.State({}))
    q, k, v = (jnp.concatenate([x] * 4, axis=-1) for x in _qkv())
    out = nnx.jit(lambda m, q, k, v: m(q, k, v))(layer, q, k, v)
    self.assertEqual(out.shape, q.shape)
    self.assertTrue(jnp.all(jnp.isfinite(out)))

  def test_rejects_bad_knobs(self):
    q, k, v = _qkv()
    with self.assertRaisesRegex(ValueError, "window_size=0"):
      sb.scatterbrain_attention(q, k, v, projection=_P, window_size=0)
    with self.assertRaisesRegex(ValueError, "projection.shape="):
      sb.scatterbrain_attention(q, k, v, projection=_P[:, :4])
    with self.assertRaisesRegex(ValueError, "num_features=0"):
      attentions.build(
        "scatterbrain", num_heads=H, head_dim=D, max_length=8, rngs=nnx.Rngs(0), num_features=0
      )


if __name__ == "__main__":
  pytest.main([__file__])
