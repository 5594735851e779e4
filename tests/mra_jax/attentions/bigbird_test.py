"""Tests of BigBird block-sparse attention against a dense oracle on the same pattern."""
# pylint: disable=invalid-name

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from mra_jax import attentions
from mra_jax.attentions import bigbird

from . import sparse_testing  # pylint: disable=relative-beyond-top-level

B, L, H, D = 2, 75, 2, 8


# One compilation per knob setting, shared by every test in this file.
_bigbird = jax.jit(bigbird.bigbird_attention, static_argnames=("block_size", "num_random_blocks"))


def _qkv(length=L, seed=0):
  return sparse_testing.random_qkv(B, length, H, D, seed=seed)


def _mask(length=L):
  return sparse_testing.two_row_mask(length, 15)


_block_pattern = jax.jit(bigbird.bigbird_block_pattern, static_argnums=(0, 1, 2))


def _pattern(block_size, num_random, random_key):
  """The token-level [H, L, L] pattern, written out from the block table."""
  n = -(-L // block_size)
  allowed = np.zeros((H, n * block_size, n * block_size), bool)
  span = lambda i: slice(i * block_size, (i + 1) * block_size)
  for g in {0, n - 1}:
    allowed[:, span(g), :] = True
    allowed[:, :, span(g)] = True
  if n > 2:
    idx, ok = (np.asarray(a) for a in _block_pattern(n, H, num_random, random_key))
    for h, row, slot in zip(*np.nonzero(ok)):
      allowed[h, span(row + 1), span(idx[h, row, slot])] = True
  return jnp.array(allowed[:, :L, :L])


_dense = sparse_testing.softmax_oracle


class BigBirdPatternTest(parameterized.TestCase):
  def test_random_blocks_avoid_window_and_globals_and_are_distinct(self):
    n, r = 12, 3
    idx, ok = (np.asarray(a) for a in _block_pattern(n, H, r, jax.random.key(1)))
    self.assertEqual(idx.shape, (H, n - 2, 5 + r))
    self.assertTrue(ok[..., 5:].all())  # Enough blocks left: every draw is real.
    rows = np.arange(1, n - 1)[None, :, None]
    rand = idx[..., 5:]
    self.assertTrue(((rand > 0) & (rand < n - 1) & (np.abs(rand - rows) > 1)).all())
    self.assertTrue(all(len(set(x)) == r for x in rand.reshape(-1, r)))
    self.assertFalse(np.array_equal(idx[0], idx[1]))  # Heads draw separately.

  def test_duplicates_marked_once(self):
    idx, ok = (np.asarray(a) for a in _block_pattern(4, 1, 5, jax.random.key(0)))
    for row_idx, row_ok in zip(idx[0], ok[0]):
      self.assertEqual(sorted(row_idx[row_ok]), sorted(set(row_idx[row_ok])))
      self.assertEqual(set(row_idx[row_ok]), {0, 1, 2, 3})


class BigBirdAttentionTest(parameterized.TestCase):
  @parameterized.parameters((8, 2), (4, 3), (16, 9))
  def test_equals_dense_masked_softmax_on_same_pattern(self, block_size, num_random):
    q, k, v = _qkv()
    mask = _mask()
    key = jax.random.key(3)
    got = _bigbird(
      q, k, v, mask, block_size=block_size, num_random_blocks=num_random, random_key=key
    )
    want = _dense(q, k, v, mask, allowed=_pattern(block_size, num_random, key))
    np.testing.assert_allclose(got, want, atol=1e-5)

  def test_one_or_two_blocks_is_softmax(self):
    q, k, v = _qkv()
    want = sparse_testing.softmax_oracle(q, k, v)
    for block_size in (40, 200):
      np.testing.assert_allclose(_bigbird(q, k, v, block_size=block_size), want, atol=1e-5)

  def test_padding(self):
    q, k, v = _qkv()
    mask = _mask().at[0, 20].set(False)
    f = lambda q, k, v: _bigbird(q, k, v, mask, block_size=8)
    out = f(q, k, v)
    garbage = lambda x: jnp.where(mask[:, :, None, None], x, 1e4 * jnp.ones_like(x))
    np.testing.assert_array_equal(out, f(garbage(q), garbage(k), garbage(v)))
    self.assertTrue(np.all(np.asarray(out)[~np.asarray(mask)] == 0))
    all_pad = _bigbird(q, k, v, jnp.zeros((B, L), bool), block_size=8)
    np.testing.assert_array_equal(all_pad, 0.0)

  def test_bfloat16_finite_and_close(self):
    q, k, v = _qkv()
    mask = _mask()
    got = _bigbird(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask, block_size=8)
    self.assertEqual(got.dtype, jnp.bfloat16)
    self.assertTrue(jnp.all(jnp.isfinite(got)))
    np.testing.assert_allclose(
      got.astype(jnp.float32), _bigbird(q, k, v, mask, block_size=8), atol=5e-2
    )

  def test_grad_matches_dense_oracle_under_jit(self):
    q, k, v = _qkv()
    mask = _mask()
    key = jax.random.key(4)
    ct = jnp.asarray(np.random.default_rng(9).standard_normal(q.shape), jnp.float32)
    loss = lambda f: lambda *a: jnp.sum(f(*a) * ct)
    got = jax.jit(
      jax.grad(
        loss(
          lambda q, k, v: bigbird.bigbird_attention(q, k, v, mask, block_size=8, random_key=key)
        ),
        argnums=(0, 1, 2),
      )
    )(q, k, v)
    allowed = _pattern(8, 2, key)
    want = jax.jit(
      jax.grad(loss(lambda q, k, v: _dense(q, k, v, mask, allowed=allowed)), argnums=(0, 1, 2))
    )(q, k, v)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, atol=1e-5)

  def test_module_pattern_fixed_per_rngs_and_not_trained(self):
    make = lambda seed: attentions.build(
      "bigbird", num_heads=H, head_dim=D, max_length=128, rngs=nnx.Rngs(seed), block_size=8
    )
    layer = make(0)
    q, k, v = _qkv()
    call = nnx.jit(lambda m, q, k, v: m(q, k, v))
    out = call(layer, q, k, v)
    np.testing.assert_array_equal(out, call(layer, q, k, v))
    np.testing.assert_array_equal(out, call(make(0), q, k, v))
    self.assertGreater(float(jnp.max(jnp.abs(out - call(make(1), q, k, v)))), 1e-3)
    self.assertEqual(nnx.state(layer, nnx.Param), nnx.State({}))

  def test_rejects_bad_knobs(self):
    q, k, v = _qkv()
    with self.assertRaisesRegex(ValueError, "block_size=0"):
      bigbird.bigbird_attention(q, k, v, block_size=0)
    with self.assertRaisesRegex(ValueError, "num_random_blocks=-2"):
      attentions.build(
        "bigbird", num_heads=H, head_dim=D, max_length=8, rngs=nnx.Rngs(0), num_random_blocks=-2
      )


if __name__ == "__main__":
  pytest.main([__file__])
