"""mra_attention against the dense oracle and softmax, across implementations, and its contract."""
# pylint: disable=invalid-name

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu

import mra_jax
from mra_jax import reference
from pallas_kernels import jax_compat


def _qkv(B=2, L=100, H=2, D=16, Lk=None, seed=0, dtype=jnp.float32, scale=1.0):
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  Lk = L if Lk is None else Lk
  q = scale * jax.random.normal(kq, (B, L, H, D))
  k = scale * jax.random.normal(kk, (B, Lk, H, D))
  v = jax.random.normal(kv, (B, Lk, H, D))
  return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def _lengths_mask(lengths, L):
  return jnp.arange(L)[None, :] < jnp.asarray(lengths)[:, None]


@functools.partial(jax.jit, static_argnames=("knobs",))
def _fast(q, k, v, mask, knobs):
  return mra_jax.mra_attention(q, k, v, mask, impl="xla_chunked", **dict(knobs))


@functools.partial(jax.jit, static_argnames=("knobs",))
def _dense(q, k, v, mask, knobs):
  return reference.mra_attention_dense(q, k, v, mask, **dict(knobs))


@pytest.mark.parametrize("approx_mode", ["full", "sparse"])
@pytest.mark.parametrize(
  "L,block_size,knobs",
  [
    (100, 16, dict(block_per_row=2)),
    (256, 32, dict(block_per_row=2, initial_prior_first_n_blocks=1)),
    (200, 64, dict(num_blocks=5, initial_prior_diagonal_n_blocks=1)),
    (384, 128, dict(block_per_row=1)),
  ],
)
def test_matches_dense_oracle_with_padding(approx_mode, L, block_size, knobs):
  q, k, v = _qkv(L=L)
  mask = _lengths_mask([L, L - 37], L)
  key = tuple(sorted(dict(knobs, block_size=block_size, approx_mode=approx_mode).items()))
  np.testing.assert_allclose(
    _fast(q, k, v, mask, key), _dense(q, k, v, mask, key), atol=2e-6, rtol=1e-5
  )


@pytest.mark.parametrize("approx_mode", ["full", "sparse"])
@pytest.mark.parametrize("masked", [False, True])
def test_every_block_selected_equals_softmax(approx_mode, masked):
  L = 150  # not a block multiple: internal padding must be invisible
  q, k, v = _qkv(L=L)
  mask = _lengths_mask([L, 61], L) if masked else None
  nb = -(-L // 32)
  out = _fast(q, k, v, mask, (("approx_mode", approx_mode), ("num_blocks", nb * nb)))
  np.testing.assert_allclose(out, reference.softmax_attention(q, k, v, mask), atol=3e-6)


def test_cross_attention_matches_oracle():
  q, _, _ = _qkv(L=96)
  _, k, v = _qkv(L=96, Lk=200, seed=1)
  key_mask = _lengths_mask([200, 150], 200)
  fast = jax.jit(lambda q, k, v, m: mra_jax.mra_attention(q, k, v, key_mask=m, block_per_row=3))
  dense = jax.jit(
    lambda q, k, v, m: reference.mra_attention_dense(q, k, v, key_mask=m, block_per_row=3)
  )
  np.testing.assert_allclose(fast(q, k, v, key_mask), dense(q, k, v, key_mask), atol=2e-6)
  everything = jax.jit(
    lambda q, k, v, m: mra_jax.mra_attention(q, k, v, key_mask=m, num_blocks=3 * 7)
  )(q, k, v, key_mask)
  np.testing.assert_allclose(
    everything, reference.softmax_attention(q, k, v, key_mask=key_mask), atol=3e-6
  )


@pytest.mark.parametrize("approx_mode", ["full", "sparse"])
def test_padding_gives_zero_and_garbage_changes_nothing(approx_mode):
  L = 130
  q, k, v = _qkv(L=L)
  mask = _lengths_mask([L, 77], L)
  pad = ~mask[:, :, None, None]
  garbage = lambda x: jnp.where(pad, jnp.nan, x)
  run = jax.jit(
    lambda q, k, v: mra_jax.mra_attention(q, k, v, mask, block_per_row=2, approx_mode=approx_mode)
  )
  out = run(q, k, v)
  np.testing.assert_array_equal(out[1, 77:], 0.0)
  np.testing.assert_array_equal(run(garbage(q), garbage(k), garbage(v)), out)
  grads = jax.grad(lambda *a: jnp.sum(run(*a) ** 2), argnums=(0, 1, 2))(
    garbage(q), garbage(k), garbage(v)
  )
  for g in grads:
    assert np.isfinite(np.asarray(g)).all()
    np.testing.assert_array_equal(g[1, 77:], 0.0)


@pytest.mark.parametrize("approx_mode", ["full", "sparse"])
def test_all_padding_rows_are_zero_with_finite_gradients(approx_mode):
  q, k, v = _qkv(L=64)
  mask = _lengths_mask([64, 0], 64)
  run = jax.jit(lambda q, k, v: mra_jax.mra_attention(q, k, v, mask, approx_mode=approx_mode))
  out = run(q, k, v)
  np.testing.assert_array_equal(out[1], 0.0)
  assert np.isfinite(np.asarray(out)).all()
  grads = jax.grad(lambda *a: jnp.sum(run(*a)), argnums=(0, 1, 2))(q, k, v)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)


@pytest.mark.parametrize("approx_mode", ["full", "sparse"])
def test_extreme_logits_stay_finite_and_match_oracle(approx_mode):
  q, k, v = _qkv(L=128, scale=12.0)  # logits in the hundreds
  mask = _lengths_mask([128, 90], 128)
  knobs = (("approx_mode", approx_mode), ("block_per_row", 2))
  out = _fast(q, k, v, mask, knobs)
  assert np.isfinite(np.asarray(out)).all()
  # Logits in the hundreds carry about 1e-4 absolute round-off in float32.
  np.testing.assert_allclose(out, _dense(q, k, v, mask, knobs), atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("approx_mode", ["full", "sparse"])
def test_gradients_match_oracle_under_random_cotangent(approx_mode):
  q, k, v = _qkv(L=160)
  mask = _lengths_mask([160, 111], 160)
  cot = jax.random.normal(jax.random.key(7), q.shape)
  knobs = (("approx_mode", approx_mode), ("block_per_row", 2))
  _, fast_vjp = jax.vjp(lambda *a: _fast(*a, mask, knobs), q, k, v)
  _, dense_vjp = jax.vjp(lambda *a: _dense(*a, mask, knobs), q, k, v)
  for got, want in zip(fast_vjp(cot), dense_vjp(cot)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("approx_mode", ["full", "sparse"])
def test_check_grads_small(approx_mode):
  q, k, v = _qkv(B=1, L=64, H=1, D=8)
  mask = _lengths_mask([50], 64)
  f = lambda q, k, v: mra_jax.mra_attention(
    q, k, v, mask, block_size=16, num_blocks=6, approx_mode=approx_mode
  )
  # Selection is piecewise constant: a step of 1e-3 does not flip it at these inputs.
  jtu.check_grads(f, (q, k, v), order=1, modes=("rev",), eps=1e-3, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("approx_mode", ["full", "sparse"])
def test_half_precision_inputs(dtype, approx_mode):
  q, k, v = _qkv(L=128)
  mask = _lengths_mask([128, 100], 128)
  low = [x.astype(dtype) for x in (q, k, v)]
  run = jax.jit(
    lambda *a: mra_jax.mra_attention(*a, mask, block_per_row=2, approx_mode=approx_mode)
  )
  out = run(*low)
  assert out.dtype == dtype
  assert np.isfinite(np.asarray(out, np.float32)).all()
  # Statistics are float32, so the only error is the inputs' rounding.
  want = reference.mra_attention_dense(
    *[x.astype(jnp.float32) for x in low], mask, block_per_row=2, approx_mode=approx_mode
  )
  np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=2e-2)
  grads = jax.jit(jax.grad(lambda *a: jnp.sum(run(*a).astype(jnp.float32)), argnums=(0, 1, 2)))(
    *low
  )
  assert all(g.dtype == dtype and np.isfinite(np.asarray(g, np.float32)).all() for g in grads)


def test_budget_follows_runtime_length_and_is_capped():
  q, k, v = _qkv(B=1, L=64)
  # 2 blocks per side: a budget above 4 tiles is capped, so this is exact attention.
  out = mra_jax.mra_attention(q, k, v, num_blocks=1000, approx_mode="sparse")
  np.testing.assert_allclose(out, reference.softmax_attention(q, k, v), atol=3e-6)


def test_auto_uses_xla_chunked_on_cpu():
  q, k, v = _qkv(L=96)
  np.testing.assert_array_equal(
    mra_jax.mra_attention(q, k, v, impl="auto"), mra_jax.mra_attention(q, k, v, impl="xla_chunked")
  )


@pytest.mark.parametrize(
  "impl, approx_mode",
  [
    ("reference", "full"),
    ("pallas_triton", "full"),
    ("pallas_triton", "sparse"),
    ("pallas_mosaic_tpu", "sparse"),
  ],
)
def test_implementations_match_xla_chunked_with_gradients(impl, approx_mode):
  # Pallas implementations run in interpret mode on CPU; pallas_triton at IEEE float32 dots
  # (its default, bf16x3, is within 2e-5, not 1e-6).
  precision = lambda impl: {"precision": "float32"} if impl == "pallas_triton" else {}
  ks = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(key, (1, 80, 1, 16)) for key in ks[:3])
  mask = jnp.arange(80)[None, :] < 70
  cot = jax.random.normal(ks[3], q.shape)
  run = lambda impl: jax.vjp(
    jax.jit(
      lambda q, k, v: mra_jax.mra_attention(
        q, k, v, mask, block_per_row=1, approx_mode=approx_mode, impl=impl, **precision(impl)
      )
    ),
    q,
    k,
    v,
  )
  (out, vjp), (want, want_vjp) = run(impl), run("xla_chunked")
  np.testing.assert_allclose(out, want, atol=1e-6)
  for got, expected in zip(vjp(cot), want_vjp(cot)):
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
  "impl, lowering_platform, marker",
  [
    ("pallas_triton", "cuda", "__gpu$xla.gpu.triton"),
    ("pallas_mosaic_tpu", "tpu", "tpu_custom_call"),
  ],
)
def test_forward_and_backward_lower_for_accelerators(impl, lowering_platform, marker):
  # Lowered for the device from this CPU host: the kernels follow the lowering platform and
  # are compiled, not interpreted.
  sds = jax.ShapeDtypeStruct((1, 256, 2, 64), jnp.bfloat16)
  loss = lambda q, k, v: jnp.sum(
    mra_jax.mra_attention(q, k, v, block_per_row=2, impl=impl).astype(jnp.float32)
  )
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  # jax 0.11 lowers Triton only for a known GPU: an abstract H100 stands in for one.
  target = jax_compat.abstract_gpu() if lowering_platform == "cuda" else contextlib.nullcontext()
  with target:
    text = grad.trace(sds, sds, sds).lower(lowering_platforms=(lowering_platform,)).as_text()
  # forward, dq and dk/dv kernels
  assert text.count(marker) == 3, text.count(marker)


_BAD = [
  (dict(query=jnp.zeros((2, 64, 16))), "query.shape"),
  (dict(key=jnp.zeros((2, 64, 3, 16))), "key must match"),
  (dict(value=jnp.zeros((2, 32, 2, 16))), "value.shape"),
  (dict(query=jnp.zeros((2, 64, 2, 16), jnp.int32)), "query.dtype"),
  (dict(mask=jnp.ones((2, 63), bool)), "mask.shape"),
  (dict(key_mask=jnp.ones((1, 64), bool)), "key_mask.shape"),
  (dict(block_size=24), "block_size=24"),
  (dict(block_size=0), "block_size=0"),
  (dict(num_blocks=0), "num_blocks=0"),
  (dict(block_per_row=0), "block_per_row=0"),
  (dict(approx_mode="dense"), "approx_mode='dense'"),
  (dict(impl="cuda"), "impl='cuda'"),
  (dict(impl="pallas"), "impl='pallas'"),
  (dict(initial_prior_first_n_blocks=-1), "initial_prior_first_n_blocks=-1"),
  (dict(initial_prior_diagonal_n_blocks=1.5), "initial_prior_diagonal_n_blocks=1.5"),
]


@pytest.mark.parametrize("bad,message", _BAD, ids=[m for _, m in _BAD])
def test_bad_input_names_the_argument(bad, message):
  args = dict(zip(("query", "key", "value"), _qkv(L=64)))
  args.update(bad)
  with pytest.raises(
    ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
  ):
    mra_jax.mra_attention(**args)
