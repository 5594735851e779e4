"""The mra2 / mra2_s registry modules: thin wrappers of mra_jax.mra_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mra_jax
from mra_jax import attentions


def _qkv(length=64):
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, length, 2, 8))
  mask = jnp.arange(length)[None, :] < jnp.array([length, 40])[:, None]
  return q, k, v, mask


def test_mra2_s_is_the_sparse_mode():
  layer = attentions.build("mra2_s", num_heads=2, head_dim=8, max_length=64, rngs=nnx.Rngs(0))
  assert layer.config.approx_mode == "sparse"
  assert (
    attentions.build(
      "mra2", num_heads=2, head_dim=8, max_length=64, rngs=nnx.Rngs(0)
    ).config.approx_mode
    == "full"
  )


def test_module_equals_the_function():
  name, mode = "mra2", "full"
  layer = attentions.build(
    name,
    num_heads=2,
    head_dim=8,
    max_length=64,
    rngs=nnx.Rngs(0),
    block_size=16,
    block_per_row=2,
    initial_prior_first_n_blocks=1,
  )
  q, k, v, mask = _qkv()
  got = nnx.jit(lambda m, *a: m(*a))(layer, q, k, v, mask)
  want = jax.jit(
    lambda *a: mra_jax.mra_attention(
      *a, block_size=16, block_per_row=2, initial_prior_first_n_blocks=1, approx_mode=mode
    )
  )(q, k, v, mask)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_bad_knobs_raise_at_build():
  with pytest.raises(ValueError, match="block_size"):
    attentions.build(
      "mra2", num_heads=2, head_dim=8, max_length=64, rngs=nnx.Rngs(0), block_size=24
    )
  with pytest.raises(ValueError, match="pins approx_mode='sparse'"):
    attentions.build(
      "mra2_s", num_heads=2, head_dim=8, max_length=64, rngs=nnx.Rngs(0), approx_mode="full"
    )
