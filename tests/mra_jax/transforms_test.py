"""mra_attention under jit, vmap, grad, pmap and batch sharding (4 simulated CPU devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import mra_jax

_KNOBS = dict(block_per_row=2, initial_prior_first_n_blocks=1)


def _inputs(B=4, L=96, H=2, D=8):
  ks = jax.random.split(jax.random.key(3), 3)
  q, k, v = (jax.random.normal(kk, (B, L, H, D)) for kk in ks)
  mask = jnp.arange(L)[None, :] < jnp.array([96, 80, 50, 1])[:B, None]
  return q, k, v, mask


def _mra(q, k, v, mask):
  return mra_jax.mra_attention(q, k, v, mask, **_KNOBS)


def test_jit_equals_eager():
  args = _inputs()
  np.testing.assert_allclose(jax.jit(_mra)(*args), _mra(*args), atol=1e-6)


def test_vmap_over_an_extra_axis_equals_a_loop():
  q, k, v, mask = _inputs()
  stacked = [jnp.stack([x, x[::-1]]) for x in (q, k, v, mask)]
  out = jax.jit(jax.vmap(_mra))(*stacked)
  np.testing.assert_allclose(out[0], jax.jit(_mra)(q, k, v, mask), atol=1e-6)
  np.testing.assert_allclose(
    out[1], jax.jit(_mra)(q[::-1], k[::-1], v[::-1], mask[::-1]), atol=1e-6
  )


def test_grad_equals_autodiff_of_the_reference():
  """The CPU path's hand-written VJP (xla_chunked) against jax's autodiff of the one-shot
  jnp reference, through MRA's selection, low-resolution term and padding."""
  q, k, v, mask = _inputs()

  def grads(impl):
    loss = lambda *a: jnp.sum(mra_jax.mra_attention(*a, mask, impl=impl, **_KNOBS) ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

  for got, want in zip(grads("xla_chunked"), grads("reference")):
    assert float(jnp.abs(want).max()) > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.abs(want).max()))


def test_pmap_equals_single_device():
  assert jax.device_count() >= 4, "tests/conftest.py asks for 4 CPU devices"
  q, k, v, mask = _inputs()
  split = lambda x: x.reshape(4, 1, *x.shape[1:])
  out = jax.pmap(_mra)(*map(split, (q, k, v, mask)))
  np.testing.assert_allclose(out.reshape(q.shape), jax.jit(_mra)(q, k, v, mask), atol=1e-6)


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_batch_sharded_inputs_keep_their_sharding(axis_type):
  mesh = jax.make_mesh((4,), ("data",), axis_types=(axis_type,))
  q, k, v, mask = _inputs()
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
  out = jax.jit(_mra)(*map(shard, (q, k, v, mask)))
  assert out.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), out.ndim)
  np.testing.assert_allclose(out, jax.jit(_mra)(q, k, v, mask), atol=1e-6)
