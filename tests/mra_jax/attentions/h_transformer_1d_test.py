"""Tests of H-Transformer-1D hierarchical attention against a dense H-matrix oracle."""
# pylint: disable=invalid-name

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from mra_jax import attentions
from mra_jax.attentions import h_transformer_1d as h1d

from . import sparse_testing  # pylint: disable=relative-beyond-top-level

B, L, H, D = 2, 45, 2, 8


# One compilation per knob setting, shared by every test in this file.
_h1d = jax.jit(h1d.h_transformer_1d_attention, static_argnames=("block_size",))


def _qkv(length=L, seed=0):
  return sparse_testing.random_qkv(B, length, H, D, seed=seed)


def _mask(length=L):
  return sparse_testing.two_row_mask(length, 12)


@functools.partial(jax.jit, static_argnames="block_size")
def _dense_h_matrix(q, k, v, mask, *, block_size):
  """Oracle: the H-matrix written out as an [L, L] weight matrix (small L only).

  Pair (i, j) lives at level 0 when their blocks are equal or siblings, else at the
  level of the highest differing bit of the block indices; its weight is
  exp(q~ . k~ / sqrt(D)) with q~, k~ the means over the real tokens of the 2^level
  groups that hold i and j.
  """
  n0 = 1
  while n0 * block_size < L:
    n0 *= 2
  lp = n0 * block_size
  pad = lambda x: jnp.pad(x, ((0, 0), (0, lp - L)) + ((0, 0),) * (x.ndim - 2))
  q, k, v, m = pad(q), pad(k), pad(v), pad(mask).astype(jnp.float32)
  blk = np.arange(lp) // block_size
  xor = blk[:, None] ^ blk[None, :]
  level = np.where(xor <= 1, 0, np.floor(np.log2(np.maximum(xor, 1))).astype(int))
  weights = jnp.zeros((B, H, lp, lp))
  for lvl in range(int(level.max()) + 1):
    f = 2**lvl

    def group_mean(x):
      s = (x * m[:, :, None, None]).reshape(B, lp // f, f, H, D).sum(2)
      c = m.reshape(B, lp // f, f).sum(2)[:, :, None, None]
      return jnp.repeat(s / jnp.maximum(c, 1.0), f, axis=1)

    s = jnp.einsum("blhd,bmhd->bhlm", group_mean(q), group_mean(k)) / np.sqrt(D)
    weights = weights + jnp.where(jnp.array(level == lvl)[None, None], jnp.exp(s), 0.0)
  weights = weights * m[:, None, None, :]
  o = jnp.einsum("bhlm,bmhd->blhd", weights / weights.sum(-1, keepdims=True), v)
  return jnp.where(mask[:, :, None, None], o[:, :L], 0.0)


class HTransformer1DTest(parameterized.TestCase):
  @parameterized.parameters(23, 64)
  def test_top_level_covering_everything_is_softmax(self, block_size):
    # L <= 2 * block_size: only level 0 (a block and its sibling) exists: exact.
    q, k, v = _qkv()
    mask = _mask()
    want = sparse_testing.softmax_oracle(q, k, v, mask)
    np.testing.assert_allclose(_h1d(q, k, v, mask, block_size=block_size), want, atol=1e-5)

  @parameterized.parameters(2, 3)
  def test_equals_dense_h_matrix_oracle(self, block_size):
    q, k, v = _qkv()
    mask = _mask()
    np.testing.assert_allclose(
      _h1d(q, k, v, mask, block_size=block_size),
      _dense_h_matrix(q, k, v, mask, block_size=block_size),
      atol=1e-5,
    )

  def test_constant_query_averages_all_values(self):
    # q = 0 makes every weight exp(0) times its token count: the exact mean of v at
    # every level, so any miscounted coarse cell shows.
    v = jnp.broadcast_to(jnp.arange(16.0)[None, :, None, None], (1, 16, 1, 2))
    q = jnp.zeros_like(v)
    np.testing.assert_allclose(_h1d(q, q, v, block_size=2), jnp.full_like(v, 7.5), atol=1e-5)

  def test_padding(self):
    q, k, v = _qkv()
    mask = _mask().at[0, 7].set(False)
    f = lambda q, k, v: _h1d(q, k, v, mask, block_size=4)
    out = f(q, k, v)
    garbage = lambda x: jnp.where(mask[:, :, None, None], x, 1e4 * jnp.ones_like(x))
    np.testing.assert_array_equal(out, f(garbage(q), garbage(k), garbage(v)))
    self.assertTrue(np.all(np.asarray(out)[~np.asarray(mask)] == 0))
    all_pad = _h1d(q, k, v, jnp.zeros((B, L), bool), block_size=4)
    np.testing.assert_array_equal(all_pad, 0.0)

  def test_bfloat16_finite_and_close(self):
    q, k, v = _qkv()
    mask = _mask()
    got = _h1d(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask, block_size=4)
    self.assertEqual(got.dtype, jnp.bfloat16)
    self.assertTrue(jnp.all(jnp.isfinite(got)))
    np.testing.assert_allclose(
      got.astype(jnp.float32), _h1d(q, k, v, mask, block_size=4), atol=5e-2
    )

  def test_grad_matches_dense_oracle_under_jit(self):
    q, k, v = _qkv()
    mask = _mask()
    ct = jnp.asarray(np.random.default_rng(9).standard_normal(q.shape), jnp.float32)
    loss = lambda f: lambda *a: jnp.sum(f(*a) * ct)
    got = jax.jit(
      jax.grad(
        loss(lambda q, k, v: h1d.h_transformer_1d_attention(q, k, v, mask, block_size=4)),
        argnums=(0, 1, 2),
      )
    )(q, k, v)
    want = jax.jit(
      jax.grad(
        loss(lambda q, k, v: _dense_h_matrix(q, k, v, mask, block_size=4)), argnums=(0, 1, 2)
      )
    )(q, k, v)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, atol=1e-4)

  def test_module_under_nnx_jit(self):
    layer = attentions.build(
      "h_transformer_1d", num_heads=H, head_dim=D, max_length=64, rngs=nnx.Rngs(0), block_size=4
    )
    q, k, v = _qkv()
    mask = _mask()
    out = nnx.jit(lambda m, q, k, v, mask: m(q, k, v, mask))(layer, q, k, v, mask)
    np.testing.assert_allclose(out, _h1d(q, k, v, mask, block_size=4), atol=1e-6)

  def test_rejects_bad_knobs(self):
    q, k, v = _qkv()
    with self.assertRaisesRegex(ValueError, "block_size=0"):
      h1d.h_transformer_1d_attention(q, k, v, block_size=0)
    with self.assertRaisesRegex(ValueError, "block_size=1.5"):
      attentions.build(
        "h_transformer_1d", num_heads=H, head_dim=D, max_length=8, rngs=nnx.Rngs(0), block_size=1.5
      )


if __name__ == "__main__":
  pytest.main([__file__])
