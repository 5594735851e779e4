"""Tests of Reformer LSH attention: hashing, sorting, and chunked attention oracles."""
# pylint: disable=invalid-name

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from mra_jax import attentions
from mra_jax.attentions import hash_random, reformer

from . import sparse_testing  # pylint: disable=relative-beyond-top-level

B, L, H, D = 2, 48, 2, 8

# One compilation per knob setting, shared by every test in this file.
_reformer = jax.jit(
  reformer.reformer_attention,
  static_argnames=(
    "num_hashes",
    "chunk_length",
    "num_buckets",
    "shared_qk",
    "attend_across_buckets",
  ),
)
_buckets = jax.jit(reformer.lsh_buckets, static_argnames="num_buckets")


def _qkv(length=L, seed=0):
  return sparse_testing.random_qkv(B, length, H, D, seed=seed)


def _mask(length=L):
  return sparse_testing.two_row_mask(length, 13)


@functools.partial(jax.jit, static_argnames="shared_qk")
def _dense_weighted(q, k, v, mask, count_BxHxLxL, shared_qk):
  """Oracle: softmax weights exp(s_ij) * count_ij over real keys, built densely.

  With rounds combined by their logsumexp, LSH attention is exactly this, where
  count_ij is the number of rounds in which key j is within query i's reach.
  """
  if shared_qk:
    k = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    s = jnp.einsum("blhd,bmhd->bhlm", q, k)
    s = jnp.where(jnp.eye(L, dtype=bool)[None, None], -1e5, s)
  else:
    s = jnp.einsum("blhd,bmhd->bhlm", q, k) / np.sqrt(D)
  w = count_BxHxLxL * mask[:, None, None, :]
  s = jnp.where(w > 0, s, -jnp.inf)
  p = jnp.exp(s - jnp.max(s, -1, keepdims=True)) * w
  o = jnp.einsum("bhlm,bmhd->blhd", p / p.sum(-1, keepdims=True), v)
  return jnp.where(mask[:, :, None, None], o, 0.0)


def _reach_counts(
  q, k, mask, *, num_hashes, chunk, num_buckets, shared_qk, attend_across_buckets, random_key
):
  """count_ij: rounds where key j sits in query i's sorted chunk or the one before."""
  factors = reformer.bucket_factors(num_buckets, L, chunk)
  rotations = hash_random.hash_normal(random_key, (H, D, num_hashes, sum(n // 2 for n in factors)))
  to_bhld = lambda x: jnp.transpose(x, (0, 2, 1, 3))
  bq = _buckets(to_bhld(q), rotations, mask, num_buckets=factors)
  bk = bq if shared_qk else _buckets(to_bhld(k), rotations, mask, num_buckets=factors)
  rank = lambda b: np.argsort(np.asarray(reformer.sort_by_bucket(b)), axis=-1)
  cq, ck = rank(bq) // chunk, rank(bk) // chunk
  nc = L // chunk
  cq, ck = cq[..., :, None], ck[..., None, :]
  reach = (ck == cq) | ((nc > 1) & (ck == (cq - 1) % nc))
  if not attend_across_buckets:
    reach &= np.asarray(bq)[..., :, None] == np.asarray(bk)[..., None, :]
  return jnp.array(reach.sum(axis=2), jnp.float32)


class LshTest(parameterized.TestCase):
  def test_collisions_follow_angle(self):
    # 256 independent rounds at 8 buckets: collision frequency must fall with the
    # angle; equal directions always collide, opposite ones never (argmax of
    # [xR, -xR] flips to the other half).
    x, y = jnp.asarray(np.random.default_rng(0).standard_normal((2, D)), jnp.float32)
    y = y - (y @ x) / (x @ x) * x
    y = y * jnp.linalg.norm(x) / jnp.linalg.norm(y)
    angles = np.array([0.0, 0.3, 0.8, 1.5, 2.5, np.pi])  # Radians.
    vecs = jnp.stack([jnp.cos(a) * x + jnp.sin(a) * y for a in angles] + [3.0 * x])
    rotations = hash_random.hash_normal(jax.random.key(5), (1, D, 256, 4))
    buckets = np.asarray(
      _buckets(vecs[None, None], rotations, jnp.ones((1, 7), bool), num_buckets=8)
    )[0, 0]  # [R, 7]
    freq = (buckets[:, :6] == buckets[:, :1]).mean(axis=0)
    self.assertEqual(freq[0], 1.0)
    self.assertTrue(np.all(buckets[:, 6] == buckets[:, 0]))  # 3x collides with x.
    self.assertEqual(freq[-1], 0.0)
    self.assertTrue(np.all(np.diff(freq[:4]) < 0) and np.all(np.diff(freq) <= 0), freq)

  def test_large_bucket_counts_factorise(self):
    self.assertEqual(reformer.bucket_factors(512, 16384, 64), (16, 32))
    self.assertEqual(reformer.bucket_factors(64, 4096, 64), (64,))
    q = _qkv()[0]
    rotations = hash_random.hash_normal(jax.random.key(3), (H, D, 2, 2 + 4))
    buckets = np.asarray(
      _buckets(
        jnp.transpose(q, (0, 2, 1, 3)), rotations, jnp.ones((B, L), bool), num_buckets=(4, 8)
      )
    )
    self.assertTrue(buckets.min() >= 0 and buckets.max() < 32)
    self.assertGreater(len(np.unique(buckets)), 16)  # Both digits vary.

  def test_sort_is_a_valid_permutation_grouping_buckets(self):
    q = _qkv()[0]
    mask = _mask()
    rotations = hash_random.hash_normal(jax.random.key(2), (H, D, 3, 4))
    buckets = _buckets(jnp.transpose(q, (0, 2, 1, 3)), rotations, mask, num_buckets=8)
    perm = np.asarray(reformer.sort_by_bucket(buckets))
    np.testing.assert_array_equal(np.sort(perm, axis=-1), np.broadcast_to(np.arange(L), perm.shape))
    sorted_buckets = np.take_along_axis(np.asarray(buckets), perm, axis=-1)
    self.assertTrue(np.all(np.diff(sorted_buckets, axis=-1) >= 0))
    # Padded positions (bucket 8) sort last; within a bucket, by position.
    self.assertTrue(np.all(sorted_buckets[1, ..., L - 13 :] == 8))
    same = np.diff(sorted_buckets, axis=-1) == 0
    self.assertTrue(np.all(np.diff(perm, axis=-1)[same] > 0))


class ReformerAttentionTest(parameterized.TestCase):
  def test_one_bucket_one_chunk_is_softmax(self):
    q, k, v = _qkv()
    mask = _mask()
    want = sparse_testing.softmax_oracle(q, k, v, mask)
    got = _reformer(q, k, v, mask, num_buckets=1, chunk_length=64, shared_qk=False)
    np.testing.assert_allclose(got, want, atol=1e-5)

  def test_shared_qk_one_bucket_is_softmax_without_self(self):
    # Shared QK: keys are unit-length queries and the own position gets logit -1e5.
    q, k, v = _qkv()
    mask = _mask()
    ones = jnp.ones((B, H, L, L))
    got = _reformer(q, k, v, mask, num_buckets=1, chunk_length=64)
    np.testing.assert_allclose(got, _dense_weighted(q, k, v, mask, ones, True), atol=1e-5)
    # The key argument is not read.
    np.testing.assert_array_equal(got, _reformer(q, 0 * k, v, mask, num_buckets=1, chunk_length=64))

  # 32 buckets at L = 48, chunk 8 are hashed as two factors (4, 8), as HF does.
  @parameterized.parameters(
    (True, True, 4), (False, True, 32), (True, False, 32), (False, False, 4)
  )
  def test_equals_dense_oracle_on_lsh_reach(self, shared_qk, attend_across_buckets, num_buckets):
    q, k, v = _qkv()
    mask = jnp.ones((B, L), bool)
    knobs = dict(
      num_hashes=2,
      chunk_length=8,
      num_buckets=num_buckets,
      shared_qk=shared_qk,
      attend_across_buckets=attend_across_buckets,
    )
    key = jax.random.key(11)
    counts = _reach_counts(
      q,
      k,
      mask,
      chunk=8,
      random_key=key,
      **{n: knobs[n] for n in ("num_hashes", "num_buckets", "shared_qk", "attend_across_buckets")},
    )
    self.assertTrue(np.all(np.asarray(counts).sum(-1) < 2 * L))  # Truly sparse.
    got = _reformer(q, k, v, mask, random_key=key, **knobs)
    want = _dense_weighted(q, k, v, mask, counts, shared_qk)
    if not attend_across_buckets:  # A query alone in its bucket gets no key: output 0.
      want = jnp.where(jnp.transpose(counts.sum(-1) > 0, (0, 2, 1))[..., None], want, 0.0)
    np.testing.assert_allclose(got, want, atol=1e-5)

  def test_padding(self):
    q, k, v = _qkv()
    mask = _mask().at[0, 4].set(False)
    f = lambda q, k, v: _reformer(q, k, v, mask, chunk_length=8, shared_qk=False)
    out = f(q, k, v)
    garbage = lambda x: jnp.where(mask[:, :, None, None], x, 1e4 * jnp.ones_like(x))
    np.testing.assert_array_equal(out, f(garbage(q), garbage(k), garbage(v)))
    self.assertTrue(np.all(np.asarray(out)[~np.asarray(mask)] == 0))
    all_pad = _reformer(q, k, v, jnp.zeros((B, L), bool), chunk_length=8)
    np.testing.assert_array_equal(all_pad, 0.0)

  def test_bfloat16_finite_and_close(self):
    q, k, v = _qkv()
    mask = _mask()
    got = _reformer(
      *(x.astype(jnp.bfloat16) for x in (q, k, v)), mask, num_buckets=1, chunk_length=64
    )
    self.assertEqual(got.dtype, jnp.bfloat16)
    self.assertTrue(jnp.all(jnp.isfinite(got)))
    want = _reformer(q, k, v, mask, num_buckets=1, chunk_length=64)
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=5e-2)

  def test_grad_matches_dense_oracle_under_jit(self):
    q, k, v = _qkv()
    mask = _mask()
    ct = jnp.asarray(np.random.default_rng(9).standard_normal(q.shape), jnp.float32)
    loss = lambda f: lambda *a: jnp.sum(f(*a) * ct)
    got = jax.jit(
      jax.grad(
        loss(
          lambda q, k, v: reformer.reformer_attention(q, k, v, mask, num_buckets=1, chunk_length=64)
        ),
        argnums=(0, 1, 2),
      )
    )(q, k, v)
    ones = jnp.ones((B, H, L, L))
    want = jax.jit(
      jax.grad(loss(lambda q, k, v: _dense_weighted(q, k, v, mask, ones, True)), argnums=(0, 1, 2))
    )(q, k, v)
    for g, w in zip(got, want):
      self.assertTrue(jnp.all(jnp.isfinite(g)))
      np.testing.assert_allclose(g, w, atol=1e-4)

  def test_module_fixed_rotations_not_trained(self):
    make = lambda seed: attentions.build(
      "reformer", num_heads=H, head_dim=D, max_length=64, rngs=nnx.Rngs(seed), chunk_length=8
    )
    layer = make(0)
    self.assertEqual(nnx.state(layer, nnx.Param), nnx.State({}))
    q, k, v = _qkv()
    mask = _mask()
    call = nnx.jit(lambda m, q, k, v, mask: m(q, k, v, mask))
    out = call(layer, q, k, v, mask)
    np.testing.assert_array_equal(out, call(make(0), q, k, v, mask))
    self.assertGreater(float(jnp.max(jnp.abs(out - call(make(1), q, k, v, mask)))), 1e-3)

  def test_rejects_bad_knobs(self):
    q, k, v = _qkv()
    with self.assertRaisesRegex(ValueError, "num_buckets=3"):
      reformer.reformer_attention(q, k, v, num_buckets=3)
    with self.assertRaisesRegex(ValueError, "chunk_length=0"):
      reformer.reformer_attention(q, k, v, chunk_length=0)
    with self.assertRaisesRegex(ValueError, "num_hashes=0"):
      attentions.build(
        "reformer", num_heads=H, head_dim=D, max_length=8, rngs=nnx.Rngs(0), num_hashes=0
      )


if __name__ == "__main__":
  pytest.main([__file__])
