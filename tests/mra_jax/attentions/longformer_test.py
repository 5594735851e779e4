"""Tests of Longformer attention against a dense oracle on the same pattern."""
# pylint: disable=invalid-name

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from mra_jax import attentions
from mra_jax.attentions import longformer

from . import sparse_testing  # pylint: disable=relative-beyond-top-level

B, L, H, D = 2, 45, 2, 8


# One compilation per knob setting, shared by every test in this file.
_longformer = jax.jit(
  longformer.longformer_attention, static_argnames=("window_size", "num_global_tokens")
)


def _qkv(length=L, seed=0):
  return sparse_testing.random_qkv(B, length, H, D, seed=seed)


def _mask(length=L):
  return sparse_testing.two_row_mask(length, 12)


def _pattern(window_size, num_global):
  i = np.arange(L)
  return jnp.array(
    (np.abs(i[:, None] - i[None, :]) <= window_size // 2)
    | (i[:, None] < num_global)
    | (i[None, :] < num_global)
  )


_dense = sparse_testing.softmax_oracle


class LongformerAttentionTest(parameterized.TestCase):
  @parameterized.parameters((2 * L, 1), (1000, 3))
  def test_window_covering_sequence_is_softmax(self, window_size, num_global):
    q, k, v = _qkv()
    got = _longformer(q, k, v, window_size=window_size, num_global_tokens=num_global)
    np.testing.assert_allclose(got, sparse_testing.softmax_oracle(q, k, v), atol=1e-5)

  @parameterized.parameters((6, 3), (2, 0), (9, 100))
  def test_equals_dense_masked_softmax_on_same_pattern(self, window_size, num_global):
    q, k, v = _qkv()
    mask = _mask()
    got = _longformer(q, k, v, mask, window_size=window_size, num_global_tokens=num_global)
    want = _dense(q, k, v, mask, allowed=_pattern(window_size, num_global))
    np.testing.assert_allclose(got, want, atol=1e-5)

  def test_padding(self):
    q, k, v = _qkv()
    mask = _mask().at[0, 0].set(False).at[1, 5].set(False)  # A padded global token too.
    f = lambda q, k, v: _longformer(q, k, v, mask, window_size=8, num_global_tokens=2)
    out = f(q, k, v)
    garbage = lambda x: jnp.where(mask[:, :, None, None], x, 1e4 * jnp.ones_like(x))
    np.testing.assert_array_equal(out, f(garbage(q), garbage(k), garbage(v)))
    self.assertTrue(np.all(np.asarray(out)[~np.asarray(mask)] == 0))
    np.testing.assert_allclose(out, _dense(q, k, v, mask, allowed=_pattern(8, 2)), atol=1e-5)
    all_pad = _longformer(q, k, v, jnp.zeros((B, L), bool), window_size=8)
    np.testing.assert_array_equal(all_pad, 0.0)

  def test_bfloat16_finite_and_close(self):
    q, k, v = _qkv()
    mask = _mask()
    got = _longformer(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask, window_size=8)
    self.assertEqual(got.dtype, jnp.bfloat16)
    self.assertTrue(jnp.all(jnp.isfinite(got)))
    np.testing.assert_allclose(
      got.astype(jnp.float32), _longformer(q, k, v, mask, window_size=8), atol=5e-2
    )

  def test_grad_matches_dense_oracle_under_jit(self):
    q, k, v = _qkv()
    mask = _mask()
    ct = jnp.asarray(np.random.default_rng(9).standard_normal(q.shape), jnp.float32)
    loss = lambda f: lambda *a: jnp.sum(f(*a) * ct)
    got = jax.jit(
      jax.grad(
        loss(
          lambda q, k, v: longformer.longformer_attention(
            q, k, v, mask, window_size=6, num_global_tokens=2
          )
        ),
        argnums=(0, 1, 2),
      )
    )(q, k, v)
    want = jax.jit(
      jax.grad(
        loss(lambda q, k, v: _dense(q, k, v, mask, allowed=_pattern(6, 2))), argnums=(0, 1, 2)
      )
    )(q, k, v)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, atol=1e-5)

  def test_module_split_merge_under_jit(self):
    layer = longformer.LongformerAttention(
      longformer.LongformerKnobs(window_size=8),
      num_heads=H,
      head_dim=D,
      max_length=64,
      rngs=nnx.Rngs(0),
    )
    graphdef, state = nnx.split(layer)
    q, k, v = _qkv()
    mask = _mask()
    out = jax.jit(lambda s, q, k, v, mask: nnx.merge(graphdef, s)(q, k, v, mask))(
      state, q, k, v, mask
    )
    np.testing.assert_allclose(out, _longformer(q, k, v, mask, window_size=8), atol=1e-6)

  def test_rejects_bad_knobs(self):
    q, k, v = _qkv()
    with self.assertRaisesRegex(ValueError, "num_global_tokens=-1"):
      longformer.longformer_attention(q, k, v, num_global_tokens=-1)
    with self.assertRaisesRegex(ValueError, "window_size=0"):
      attentions.build(
        "longformer", num_heads=H, head_dim=D, max_length=8, rngs=nnx.Rngs(0), window_size=0
      )


if __name__ == "__main__":
  pytest.main([__file__])
