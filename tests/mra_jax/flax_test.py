"""MRA inside Flax attention modules (linen and NNX), the NNX layer, and token layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import mra_jax

_KNOBS = dict(block_per_row=2, approx_mode="full")


def _x_and_mask(B=2, L=100, E=32):
  x = jax.random.normal(jax.random.key(0), (B, L, E))
  valid = jnp.arange(L)[None, :] < jnp.array([[L], [63]])
  return x, valid, nn.make_attention_mask(valid, valid)


def test_linen_forward_and_gradient_match_direct_call():
  x, valid, mask = _x_and_mask()
  layer = nn.MultiHeadDotProductAttention(
    num_heads=4, qkv_features=32, attention_fn=mra_jax.make_attention_fn(**_KNOBS)
  )
  params = layer.init(jax.random.key(1), x, mask=mask)
  y = layer.apply(params, x, mask=mask)
  p = params["params"]
  proj = lambda name: (
    jnp.einsum("ble,ehd->blhd", x, p[name]["kernel"]) + p[name]["bias"][None, None]
  )
  direct = mra_jax.mra_attention(proj("query"), proj("key"), proj("value"), valid, **_KNOBS)
  want = jnp.einsum("blhd,hde->ble", direct, p["out"]["kernel"]) + p["out"]["bias"][None, None]
  np.testing.assert_allclose(y, want, atol=1e-5)
  grads = jax.grad(lambda prm: jnp.sum(layer.apply(prm, x, mask=mask) ** 2))(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_nnx_forward_and_gradient():
  x, _, mask = _x_and_mask()
  layer = nnx.MultiHeadAttention(
    num_heads=4,
    in_features=32,
    decode=False,
    rngs=nnx.Rngs(0),
    attention_fn=mra_jax.make_attention_fn(**_KNOBS),
  )
  y = layer(x, mask=mask)
  np.testing.assert_array_equal(np.asarray(y).shape, (2, 100, 32))
  grads = nnx.grad(lambda m: jnp.sum(m(x, mask=mask) ** 2))(layer)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  # Padded tokens output only the output projection's bias.
  np.testing.assert_allclose(y[1, 63:], jnp.broadcast_to(layer.out.bias[...], (37, 32)), atol=1e-6)


def test_what_mra_cannot_honour_fails_loudly():
  x, _, mask = _x_and_mask()
  fn = mra_jax.make_attention_fn(**_KNOBS)
  q = x.reshape(2, 100, 4, 8)
  with pytest.raises(ValueError, match="bias"):
    fn(q, q, q, bias=jnp.zeros((2, 4, 100, 100)))
  with pytest.raises(ValueError, match="dropout_rate=0.1"):
    fn(q, q, q, dropout_rate=0.1, deterministic=False)
  with pytest.raises(ValueError, match="not a padding mask"):
    fn(q, q, q, mask=nn.make_causal_mask(jnp.ones((2, 100))))
  with pytest.raises(ValueError, match="mask.shape"):
    fn(q, q, q, mask=mask[:, :, :50])
  with pytest.raises(ValueError, match="approx_mode='dense'"):
    mra_jax.make_attention_fn(approx_mode="dense")
  # Dropout is fine when deterministic (evaluation).
  fn(q, q, q, mask=mask, dropout_rate=0.1, deterministic=True)


def test_nnx_self_attention_layer_with_image_patch_order():
  # An 8x16 image: its 4x8 patches are not runs of row-major tokens, so the order matters.
  shape = (8, 16)
  make = lambda **kw: mra_jax.MraSelfAttention(
    2, 16, rngs=nnx.Rngs(0), block_size=32, block_per_row=1, **kw
  )
  layer, plain = make(input_shape=shape), make()
  nnx.update(plain, nnx.state(layer))  # Same parameters; only input_shape differs.
  x = jax.random.normal(jax.random.key(2), (2, 128, 16))
  valid = jnp.arange(128)[None, :] < jnp.array([[128], [75]])
  y = nnx.jit(lambda m, x, valid: m(x, valid))(layer, x, valid)
  # What input_shape promises: attention on tokens in patch order, then back to row-major.
  to_patches = lambda t: mra_jax.to_patch_order(t, shape)
  want = mra_jax.from_patch_order(plain(to_patches(x), to_patches(valid)), shape)
  np.testing.assert_allclose(y, want, atol=1e-5)
  # Ignoring input_shape would give the row-major result, which differs at this budget.
  assert float(jnp.max(jnp.abs(y - plain(x, valid)))) > 1e-2
  with pytest.raises(ValueError, match="num_heads=3"):
    mra_jax.MraSelfAttention(3, 16, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_heads=0"):
    mra_jax.MraSelfAttention(0, 16, rngs=nnx.Rngs(0))


def test_patch_order_round_trip_and_patch_content():
  image = jnp.arange(8 * 16).reshape(1, 128)
  patched = mra_jax.to_patch_order(image, (8, 16))
  # The first 32 tokens are rows 0-3, columns 0-7.
  np.testing.assert_array_equal(
    patched[0, :32].reshape(4, 8), np.arange(128).reshape(8, 16)[:4, :8]
  )
  np.testing.assert_array_equal(mra_jax.from_patch_order(patched, (8, 16)), image)
  with pytest.raises(ValueError, match="input_shape"):
    mra_jax.to_patch_order(image, (6, 16))


def test_is_causal_computes_causal_mra_and_takes_a_decoders_mask():
  fn = mra_jax.make_attention_fn(block_size=32, block_per_row=2)
  q = jax.random.normal(jax.random.key(0), (2, 100, 4, 8))
  valid = jnp.arange(100)[None, :] < jnp.array([[100], [70]])
  want = mra_jax.mra_attention(q, q, q, valid, is_causal=True, block_size=32, block_per_row=2)
  decoder_mask = nn.combine_masks(nn.make_causal_mask(valid), nn.make_attention_mask(valid, valid))
  for mask in (decoder_mask, nn.make_attention_mask(valid, valid)):
    np.testing.assert_allclose(fn(q, q, q, mask=mask, is_causal=True), want, atol=1e-6)
  with pytest.raises(ValueError, match="causal mask combined with"):
    fn(q, q, q, mask=jnp.ones((2, 1, 100, 100), bool).at[:, :, 3, 7].set(False), is_causal=True)
