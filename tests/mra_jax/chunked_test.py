"""The reference path's chunked block-sparse attention against the one-shot reference."""
# pylint: disable=invalid-name

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from mra_jax import chunked


def _case(B=2, H=2, Lq=192, Lk=256, D=16, bs=32, K=11, empty_state=False, seed=0):
  ks = jax.random.split(jax.random.key(seed), 8)
  Nq, Nk = Lq // bs, Lk // bs
  q = jax.random.normal(ks[0], (B, H, Lq, D))
  k = jax.random.normal(ks[1], (B, H, Lk, D))
  v = jax.random.normal(ks[2], (B, H, Lk, D))
  # Uneven rows, some empty: a random subset of the grid per (batch, head).
  ids = (
    jax.vmap(lambda key: jnp.sort(jax.random.choice(key, Nq * Nk, (K,), replace=False)))(
      jax.random.split(ks[3], B * H)
    )
    .reshape(B, H, K)
    .astype(jnp.int32)
  )
  valid = jnp.arange(Lk)[None, :] < jnp.array([Lk, Lk - 45])[:, None]
  if empty_state:
    m0 = jnp.full((B, H, Lq), -jnp.inf)
    l0 = jnp.zeros((B, H, Lq))
    acc0 = jnp.zeros((B, H, Lq, D))
  else:
    m0 = jax.random.normal(ks[4], (B, H, Lq))
    l0 = jax.random.uniform(ks[5], (B, H, Lq), minval=0.5, maxval=3.0)
    acc0 = jax.random.normal(ks[6], (B, H, Lq, D))
  return (q, k, v, ids, valid, m0, l0, acc0), ks[7]


@pytest.mark.parametrize("empty_state", [False, True])
@pytest.mark.parametrize("chunk_bytes", [2**20, 3 * 32 * 16 * 4])  # one chunk; 3 tiles a chunk
def test_forward_and_vjp_match_reference(empty_state, chunk_bytes, monkeypatch):
  monkeypatch.setattr(chunked, "_CHUNK_BYTES", chunk_bytes)
  args, key = _case(empty_state=empty_state)
  q, k, v, ids, valid, m0, l0, acc0 = args
  ref = lambda q, k, v, l0, acc0: pallas_kernels.block_sparse_attention_reference(
    q, k, v, ids, valid, m0, l0, acc0, block_size=32
  )
  fast = lambda q, k, v, l0, acc0: chunked.chunked_block_sparse_attention(
    q, k, v, ids, valid, m0, l0, acc0, 32, 16**-0.5, pallas_kernels.DEFAULT_EPS
  )
  (out, lse), fast_vjp = jax.vjp(jax.jit(fast), q, k, v, l0, acc0)
  (out_ref, lse_ref), ref_vjp = jax.vjp(ref, q, k, v, l0, acc0)
  np.testing.assert_allclose(out, out_ref, atol=1e-6)
  np.testing.assert_allclose(lse, lse_ref, atol=1e-5)
  k1, k2 = jax.random.split(key)
  cot = (jax.random.normal(k1, out.shape), jax.random.normal(k2, lse.shape))
  for got, want in zip(fast_vjp(cot), ref_vjp(cot)):
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_rows_without_tiles_or_state_are_zero_and_finite():
  args, _ = _case(K=1, empty_state=True)
  out, lse = chunked.chunked_block_sparse_attention(*args, 32, 0.25, 1e-6)
  assert np.isfinite(np.asarray(lse)).all()
  rows_with_tiles = {int(t) // 8 for t in np.asarray(args[3][0, 0])}
  for r in set(range(6)) - rows_with_tiles:
    np.testing.assert_array_equal(out[0, 0, r * 32 : (r + 1) * 32], 0.0)
