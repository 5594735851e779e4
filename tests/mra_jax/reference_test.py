"""The dense softmax oracle against a per-query numpy loop, and its edge rows."""

import jax
import jax.numpy as jnp
import numpy as np

from mra_jax import reference

_oracle = jax.jit(reference.softmax_attention)  # One compile per shape, not one per op.


def _loop_softmax(q, k, v, q_valid, k_valid, allowed_HxLqxLk):
  """softmax(q k^T / sqrt(D)) v one query at a time, over the allowed real keys."""
  b, lq, h, d = q.shape
  out = np.zeros((b, lq, h, v.shape[-1]))
  for bi in range(b):
    for hi in range(h):
      for i in range(lq):
        keys = np.nonzero(k_valid[bi] & allowed_HxLqxLk[hi, i])[0]
        if not q_valid[bi, i] or not len(keys):
          continue
        s = q[bi, i, hi] @ k[bi, keys, hi].T / np.sqrt(d)
        p = np.exp(s - s.max())
        out[bi, i, hi] = p @ v[bi, keys, hi] / p.sum()
  return out


def test_matches_the_loop_with_padding_and_a_per_head_pattern():
  rng = np.random.default_rng(0)
  b, l, h, d = 2, 11, 2, 4
  q, k, v = (rng.standard_normal((b, l, h, d)).astype(np.float32) for _ in range(3))
  mask = np.arange(l)[None, :] < np.array([[l], [7]])
  allowed = rng.random((h, l, l)) < 0.5
  allowed[0, 3] = False  # A query with no allowed key at all.
  got = _oracle(q, k, v, mask, allowed=allowed)
  np.testing.assert_allclose(got, _loop_softmax(q, k, v, mask, mask, allowed), atol=1e-5)
  np.testing.assert_array_equal(got[:, 3, 0], 0.0)


def test_cross_attention_key_mask_and_finite_gradient_for_empty_rows():
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.standard_normal((2, 5, 1, 4)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((2, 9, 1, 4)), jnp.float32) for _ in range(2))
  key_mask = np.arange(9)[None, :] < np.array([[9], [0]])  # Row 1 has no real key.
  got = _oracle(q, k, v, key_mask=key_mask)
  want = _loop_softmax(
    *(np.asarray(x) for x in (q, k, v)), np.ones((2, 5), bool), key_mask, np.ones((1, 5, 9), bool)
  )
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_array_equal(got[1], 0.0)
  loss = lambda q, k, v: jnp.sum(_oracle(q, k, v, key_mask=key_mask))
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  for g in grads:
    assert np.isfinite(np.asarray(g)).all()
