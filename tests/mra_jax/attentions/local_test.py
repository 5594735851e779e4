"""Tests of local (sliding-window / block-local) attention."""
# pylint: disable=invalid-name

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from mra_jax import attentions
from mra_jax.attentions import local

from . import sparse_testing  # pylint: disable=relative-beyond-top-level

B, L, H, D = 2, 45, 2, 8


# One compilation per knob setting, shared by every test in this file.
_local = jax.jit(local.local_attention, static_argnames=("window_size", "block_local", "is_causal"))


def _qkv(length=L, seed=0, dtype=jnp.float32):
  return sparse_testing.random_qkv(B, length, H, D, seed=seed, dtype=dtype)


def _mask(length=L):
  return sparse_testing.two_row_mask(length, 12)


_dense = sparse_testing.softmax_oracle


class LocalAttentionTest(parameterized.TestCase):
  @parameterized.parameters((2 * L, False), (L, True))
  def test_window_covering_sequence_is_softmax(self, window_size, block_local):
    q, k, v = _qkv()
    want = sparse_testing.softmax_oracle(q, k, v)
    got = _local(q, k, v, window_size=window_size, block_local=block_local)
    np.testing.assert_allclose(got, want, atol=1e-5)

  @parameterized.parameters(1, 7, 16)
  def test_sliding_equals_dense_band(self, window_size):
    q, k, v = _qkv()
    mask = _mask()
    i = np.arange(L)
    allowed = np.abs(i[:, None] - i[None, :]) <= window_size // 2
    got = _local(q, k, v, mask, window_size=window_size)
    np.testing.assert_allclose(got, _dense(q, k, v, mask, allowed=jnp.array(allowed)), atol=1e-5)

  def test_block_local_equals_dense_blocks(self, window_size=10):
    q, k, v = _qkv()
    mask = _mask()
    i = np.arange(L) // window_size
    got = _local(q, k, v, mask, window_size=window_size, block_local=True)
    want = _dense(q, k, v, mask, allowed=jnp.array(i[:, None] == i[None, :]))
    np.testing.assert_allclose(got, want, atol=1e-5)

  @parameterized.parameters((1, False), (7, False), (16, False), (10, True), (2 * L, True))
  def test_causal_equals_dense_past_band(self, window_size, block_local):
    q, k, v = _qkv()
    mask = _mask()
    i = np.arange(L)
    past = i[None, :] <= i[:, None]
    if block_local:
      allowed = past & (i[:, None] // window_size == i[None, :] // window_size)
    else:  # The window_size keys i - window_size < j <= i.
      allowed = past & (i[:, None] - i[None, :] < window_size)
    got = _local(q, k, v, mask, window_size=window_size, block_local=block_local, is_causal=True)
    np.testing.assert_allclose(got, _dense(q, k, v, mask, allowed=jnp.array(allowed)), atol=1e-5)

  @parameterized.parameters(False, True)
  def test_causal_outputs_ignore_the_future(self, block_local):
    q, k, v = _qkv()
    t = 20
    later = lambda x, c: x.at[:, t + 1 :].set(c)
    f = lambda q, k, v: _local(q, k, v, window_size=8, block_local=block_local, is_causal=True)
    out = f(q, k, v)
    changed = f(later(q, 3.0), later(k, jnp.nan), later(v, -7.0))
    np.testing.assert_array_equal(out[:, : t + 1], changed[:, : t + 1])
    self.assertFalse(np.allclose(out[:, t + 1 :], changed[:, t + 1 :]))

  @parameterized.parameters(False, True)
  def test_padding(self, block_local):
    q, k, v = _qkv()
    mask = _mask().at[0, 3].set(False)
    f = lambda q, k, v: _local(q, k, v, mask, window_size=8, block_local=block_local)
    out = f(q, k, v)
    garbage = lambda x: jnp.where(mask[:, :, None, None], x, 1e4 * jnp.ones_like(x))
    np.testing.assert_array_equal(out, f(garbage(q), garbage(k), garbage(v)))
    self.assertTrue(np.all(np.asarray(out)[~np.asarray(mask)] == 0))
    all_pad = _local(q, k, v, jnp.zeros((B, L), bool), window_size=8)
    np.testing.assert_array_equal(all_pad, 0.0)

  def test_bfloat16_finite_and_close(self):
    q, k, v = _qkv()
    mask = _mask()
    got = _local(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask, window_size=8)
    self.assertEqual(got.dtype, jnp.bfloat16)
    self.assertTrue(jnp.all(jnp.isfinite(got)))
    np.testing.assert_allclose(
      got.astype(jnp.float32), _local(q, k, v, mask, window_size=8), atol=5e-2
    )

  def test_grad_matches_dense_oracle_under_jit(self):
    q, k, v = _qkv()
    mask = _mask()
    ct = jnp.asarray(np.random.default_rng(9).standard_normal(q.shape), jnp.float32)
    i = np.arange(L)
    allowed = jnp.array(np.abs(i[:, None] - i[None, :]) <= 3)
    loss = lambda f: lambda *a: jnp.sum(f(*a) * ct)
    got = jax.jit(
      jax.grad(
        loss(lambda q, k, v: local.local_attention(q, k, v, mask, window_size=6)), argnums=(0, 1, 2)
      )
    )(q, k, v)
    want = jax.jit(
      jax.grad(loss(lambda q, k, v: _dense(q, k, v, mask, allowed=allowed)), argnums=(0, 1, 2))
    )(q, k, v)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, atol=1e-5)

  def test_module_under_nnx_jit(self):
    layer = local.LocalAttention(
      local.LocalKnobs(window_size=8), num_heads=H, head_dim=D, max_length=64, rngs=nnx.Rngs(0)
    )
    q, k, v = _qkv()
    mask = _mask()
    out = nnx.jit(lambda m, q, k, v, mask: m(q, k, v, mask))(layer, q, k, v, mask)
    np.testing.assert_allclose(out, _local(q, k, v, mask, window_size=8), atol=1e-6)
    self.assertEqual(nnx.state(layer, nnx.Param), nnx.State({}))

  def test_rejects_bad_input(self):
    q, k, v = _qkv()
    with self.assertRaisesRegex(ValueError, "window_size=0"):
      local.local_attention(q, k, v, window_size=0)
    with self.assertRaisesRegex(ValueError, "mask.shape="):
      local.local_attention(q, k, v, jnp.ones((B, L + 1), bool))
    with self.assertRaisesRegex(ValueError, "key.shape="):
      local.local_attention(q, k[:, :-1], v[:, :-1])
    with self.assertRaisesRegex(ValueError, "window_size=-1"):
      attentions.build(
        "local", num_heads=H, head_dim=D, max_length=8, rngs=nnx.Rngs(0), window_size=-1
      )


if __name__ == "__main__":
  pytest.main([__file__])
