"""The sparse-pattern attentions compute only their pattern: memory linear in L, far below L x L.

One test for every method whose pattern is sparse, so the compiled-memory check lives in
one place (each method's own test file holds its exactness tests).
"""

import functools

import jax
import jax.numpy as jnp
import pytest

from mra_jax.attentions import bigbird, h_transformer_1d, local, longformer, reformer, scatterbrain


def _scatterbrain(q, k, v):
  # M = 110 random features: O(L * (window + M)), about an L x L f32 matrix / 3.9 at 4096.
  projection = scatterbrain.orthogonal_random_features(jax.random.key(0), 110, 32)
  return scatterbrain.scatterbrain_attention(q, k, v, projection=projection)


# (attention, the bound on temp memory at L=4096 as a fraction of one L x L f32 matrix)
_SPARSE = {
  "bigbird": (bigbird.bigbird_attention, 1 / 4),
  "h_transformer_1d": (h_transformer_1d.h_transformer_1d_attention, 1 / 4),
  "local": (local.local_attention, 1 / 4),
  "longformer": (longformer.longformer_attention, 1 / 4),
  "reformer": (reformer.reformer_attention, 1 / 4),
  "scatterbrain": (_scatterbrain, 1 / 3),
}


@functools.cache
def _temp_bytes(name, length):
  x = jax.ShapeDtypeStruct((1, length, 1, 32), jnp.float32)
  compiled = jax.jit(_SPARSE[name][0]).lower(x, x, x).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("name", sorted(_SPARSE))
def test_memory_far_below_dense_and_linear(name):
  fraction = _SPARSE[name][1]
  assert _temp_bytes(name, 4096) < fraction * 4096 * 4096 * 4, _temp_bytes(name, 4096)
  # Doubling L must not quadruple memory (quadratic would give 4x).
  assert _temp_bytes(name, 4096) < 2.5 * _temp_bytes(name, 2048)
