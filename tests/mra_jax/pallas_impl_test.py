"""mra_attention through the Pallas kernels: interpret mode on CPU, and lowering for GPU/TPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mra_jax


@pytest.mark.parametrize("approx_mode", ["full", "sparse"])
def test_pallas_interpret_matches_reference_with_gradients(approx_mode):
  ks = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(key, (1, 80, 1, 16)) for key in ks[:3])
  mask = jnp.arange(80)[None, :] < 70
  cot = jax.random.normal(ks[3], q.shape)
  run = lambda impl: jax.vjp(
    jax.jit(
      lambda q, k, v: mra_jax.mra_attention(
        q, k, v, mask, block_per_row=1, approx_mode=approx_mode, impl=impl
      )
    ),
    q,
    k,
    v,
  )
  (out, vjp), (want, want_vjp) = run("pallas"), run("reference")
  np.testing.assert_allclose(out, want, atol=1e-6)
  for got, expected in zip(vjp(cot), want_vjp(cot)):
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
  "impl,platform,marker",
  [("pallas_gpu", "cuda", "triton"), ("pallas_tpu", "tpu", "tpu_custom_call")],
)
def test_forward_and_backward_lower_for_accelerators(impl, platform, marker):
  sds = jax.ShapeDtypeStruct((1, 256, 2, 64), jnp.bfloat16)
  loss = lambda q, k, v: jnp.sum(
    mra_jax.mra_attention(q, k, v, block_per_row=2, impl=impl).astype(jnp.float32)
  )
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  text = grad.trace(sds, sds, sds).lower(lowering_platforms=(platform,)).as_text()
  # forward, dq and dk/dv kernels
  assert text.count(marker) >= 3, text.count(marker)
