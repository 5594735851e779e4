"""Tests of exact softmax attention's causal knob."""
# pylint: disable=invalid-name

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mra_jax import attentions
from mra_jax.attentions import softmax

from . import sparse_testing  # pylint: disable=relative-beyond-top-level

B, L, H, D = 2, 37, 2, 8

_causal = jax.jit(lambda q, k, v, m: softmax.softmax_attention(q, k, v, m, is_causal=True))


def test_causal_equals_jax_causal_dot_product_attention():
  q, k, v = sparse_testing.random_qkv(B, L, H, D)
  got = _causal(q, k, v, None)
  want = jax.nn.dot_product_attention(q, k, v, is_causal=True)
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)
  i = np.arange(L)
  mask = sparse_testing.two_row_mask(L, 9)
  allowed = jnp.array(i[None, :] <= i[:, None])
  np.testing.assert_allclose(
    _causal(q, k, v, mask), sparse_testing.softmax_oracle(q, k, v, mask, allowed=allowed), atol=1e-5
  )


def test_causal_outputs_ignore_the_future():
  q, k, v = sparse_testing.random_qkv(B, L, H, D)
  t = 11
  later = lambda x, c: x.at[:, t + 1 :].set(c)
  out = _causal(q, k, v, None)
  changed = _causal(later(q, 2.0), later(k, -5.0), later(v, 9.0), None)
  np.testing.assert_array_equal(out[:, : t + 1], changed[:, : t + 1])
  assert not np.allclose(out[:, t + 1 :], changed[:, t + 1 :])


def test_the_registry_module_reads_the_knob():
  layer = attentions.build(
    "softmax", num_heads=H, head_dim=D, max_length=L, rngs=nnx.Rngs(0), is_causal=True
  )
  q, k, v = sparse_testing.random_qkv(B, L, H, D, seed=1)
  np.testing.assert_allclose(layer(q, k, v), _causal(q, k, v, None), atol=1e-6)  # eager vs jit
  bidirectional = attentions.build(
    "softmax", num_heads=H, head_dim=D, max_length=L, rngs=nnx.Rngs(0)
  )
  assert not np.allclose(bidirectional(q, k, v), layer(q, k, v))
