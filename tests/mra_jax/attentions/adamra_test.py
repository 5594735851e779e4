"""AdaMRA (reconstruction): per-head pooled kernel attention, routing, linear cost."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mra_jax import attentions
from mra_jax.attentions import adamra, working_layout


def test_geometric_rates_are_coarse_to_fine_and_capped():
  assert adamra.geometric_rates(2) == (2, 1)
  assert adamra.geometric_rates(4) == (8, 4, 2, 1)
  assert adamra.geometric_rates(8, rate_base=2, max_rate=16) == (16, 16, 16, 16, 8, 4, 2, 1)


def _naive_head(q, k, v, valid, rate):
  """elu+1 linear attention of one head over rate-pooled keys/values, numpy, float64."""
  phi = lambda x: np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))
  out = np.zeros_like(q, dtype=np.float64)
  num, den = 0.0, 0.0
  for start in range(0, len(k), rate):
    idx = [i for i in range(start, min(start + rate, len(k))) if valid[i]]
    if not idx:
      continue
    c = len(idx)
    kbar, vbar = k[idx].mean(0), v[idx].mean(0)
    num = num + c * np.outer(phi(kbar), vbar)
    den = den + c * phi(kbar)
  for i in range(len(q)):
    out[i] = phi(q[i]) @ num / (phi(q[i]) @ den)
  return out


def test_heads_match_a_naive_pooled_linear_attention():
  q, k, v = np.asarray(jax.random.normal(jax.random.key(0), (3, 1, 2, 22, 4)), np.float64)
  mask = np.arange(22)[None, :] < 19
  got = jax.jit(functools.partial(adamra.adamra_heads, rates=(4, 1)))(
    *(jnp.asarray(x, jnp.float32) for x in (q, k, v)), jnp.asarray(mask)
  )
  for h, rate in enumerate((4, 1)):
    want = _naive_head(q[0, h], k[0, h], v[0, h], mask[0], rate)
    np.testing.assert_allclose(np.asarray(got[0, h, :19]), want[:19], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got[0, h, 19:]), 0.0)  # Padded queries.


def _layer(**knobs):
  return attentions.build(
    "adamra", num_heads=4, head_dim=8, max_length=64, rngs=nnx.Rngs(0), **knobs
  )


def _qkv(length=32):
  return jax.random.normal(jax.random.key(1), (3, 2, length, 4, 8))


def test_hard_selection_uses_one_resolution_per_query():
  layer = _layer(selection="hard")
  q, k, v = _qkv()
  out = nnx.jit(lambda m, q, k, v: m(q, k, v))(layer, q, k, v)
  nonzero_heads = np.sum(np.any(np.asarray(out) != 0, axis=-1), axis=-1)  # [B, L]
  np.testing.assert_array_equal(nonzero_heads, 1)
  # The router's straight-through gradient is checked in registry_test (adamra runs hard there).


def test_soft_selection_with_a_uniform_gate_is_the_plain_heads():
  layer = _layer(rates=(1, 2, 4, 8))
  layer.router_weight[...] = jnp.zeros_like(layer.router_weight[...])
  q, k, v = _qkv()
  run = jax.jit(
    lambda q, k, v: working_layout.finish(
      adamra.adamra_heads(
        *working_layout.prepare(q, k, v, None)[:3],
        working_layout.prepare(q, k, v, None)[3],
        rates=(1, 2, 4, 8),
      ),
      jnp.ones((2, 32), bool),
      jnp.float32,
    )
  )
  got = nnx.jit(lambda m, q, k, v: m(q, k, v))(layer, q, k, v)
  np.testing.assert_allclose(got, run(q, k, v), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # the default map covers the module
def test_favor_feature_map_runs():
  q, k, v = _qkv(16)
  layer = _layer(feature_map="favor", num_features=16)
  out = nnx.jit(lambda m, q, k, v: m(q, k, v))(layer, q, k, v)
  assert bool(jnp.all(jnp.isfinite(out)))
  # The random features are fixed, not trained: only the router is a parameter.
  params = nnx.state(layer, nnx.Param)
  assert sorted(params.keys()) == ["router_bias", "router_weight"]


def test_bad_knobs_name_themselves():
  with pytest.raises(ValueError, match=r"rates=\(1, 2\)"):
    _layer(rates=(1, 2))
  with pytest.raises(ValueError, match=r"rates=\(8, 0, 2, 1\)"):
    adamra.AdaMraKnobs(rates=(8, 0, 2, 1))
  # A list (from a config file) is kept as a tuple: the knobs stay hashable, static under jit.
  assert adamra.AdaMraKnobs(rates=[8, 4, 2, 1]).rates == (8, 4, 2, 1)
  with pytest.raises(ValueError, match="feature_map='softmax'"):
    _layer(feature_map="softmax")
  with pytest.raises(ValueError, match="selection='gumbel'"):
    _layer(selection="gumbel")
  with pytest.raises(ValueError, match="temperature=0"):
    _layer(temperature=0)


@pytest.mark.slow  # compiles at two lengths
def test_compiled_memory_and_flops_grow_linearly():
  layer = attentions.build("adamra", num_heads=4, head_dim=16, max_length=8192, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(layer)

  def cost(length):
    x = jax.ShapeDtypeStruct((1, length, 4, 16), jnp.float32)
    fwd_bwd = jax.grad(
      lambda q, k, v: jnp.sum(nnx.merge(graphdef, state)(q, k, v) ** 2), argnums=(0, 1, 2)
    )
    compiled = jax.jit(fwd_bwd).lower(x, x, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes, compiled.cost_analysis()["flops"]

  (mem_a, flops_a), (mem_b, flops_b) = cost(2048), cost(8192)
  assert 3.0 < mem_b / mem_a < 5.0, (mem_a, mem_b)
  assert 3.0 < flops_b / flops_a < 5.0, (flops_a, flops_b)
