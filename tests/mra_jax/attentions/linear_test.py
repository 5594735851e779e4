"""Exact limits of the low-rank baselines: softmax, Performer, Linformer, Nystromformer, SOFT."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mra_jax import attentions, reference
from mra_jax.attentions import (
  low_rank,
  nystromformer,
  performer,
  softmax,
  working_layout,
)


def _qkv(shape, seed=0, scale=1.0):
  q, k, v = jax.random.normal(jax.random.key(seed), (3,) + shape)
  return q * scale, k * scale, v


# The library's dense softmax formula, compiled once per shape.
_dense_softmax = jax.jit(reference.softmax_attention)


def test_softmax_matches_the_formula_with_padding():
  q, k, v = _qkv((2, 24, 2, 8))
  mask = jnp.arange(24)[None, :] < jnp.array([24, 13])[:, None]
  np.testing.assert_allclose(
    jax.jit(softmax.softmax_attention)(q, k, v, mask), _dense_softmax(q, k, v, mask), atol=1e-5
  )


def test_nystromformer_with_landmarks_covering_the_tokens_is_softmax():
  q, k, v = _qkv((2, 24, 2, 8))
  mask = jnp.arange(24)[None, :] < jnp.array([24, 13])[:, None]
  fn = jax.jit(functools.partial(nystromformer.nystromformer_attention, num_landmarks=24))
  np.testing.assert_allclose(fn(q, k, v, mask), _dense_softmax(q, k, v, mask), atol=1e-5)


def test_nystrom_formula_with_every_token_a_landmark_converges_to_softmax():
  # The Nystrom formula itself (no shortcut): landmarks = tokens, so A pinv(A) A = A once the
  # pseudo-inverse has converged; with the published 6 iterations it is still approximate.
  q, k, v = _qkv((1, 16, 2, 8), scale=2.0)  # Peaked softmax: a well-conditioned A.
  prep = working_layout.prepare(q, k, v, None)

  @functools.partial(jax.jit, static_argnums=0)
  def err(iterations):
    o = nystromformer.nystrom_core(*prep, num_landmarks=16, pinv_iterations=iterations)
    return jnp.max(
      jnp.abs(working_layout.finish(o, prep[3], jnp.float32) - _dense_softmax(q, k, v))
    )

  assert float(err(30)) < 1e-3
  assert float(err(30)) < float(err(2))


def test_nystromformer_error_shrinks_with_landmarks():
  q, k, v = _qkv((1, 64, 2, 8), scale=0.7)
  exact = _dense_softmax(q, k, v)

  @functools.partial(jax.jit, static_argnums=0)
  def err(m):
    out = nystromformer.nystromformer_attention(q, k, v, num_landmarks=m, pinv_iterations=10)
    return jnp.mean(jnp.abs(out - exact))

  assert float(err(32)) < float(err(4))


def test_nystromformer_function_refuses_the_conv_skip_its_module_owns():
  q, k, v = _qkv((1, 8, 2, 4))
  with pytest.raises(ValueError, match="conv_kernel_size=3"):
    nystromformer.nystromformer_attention(q, k, v, conv_kernel_size=3)
  with pytest.raises(ValueError, match="pinv_iterations=0"):
    nystromformer.nystromformer_attention(q, k, v, pinv_iterations=0)


def test_nystromformer_conv_adds_a_depthwise_convolution_of_v():
  q, k, v = _qkv((1, 20, 2, 4))
  plain = attentions.build(
    "nystromformer", num_heads=2, head_dim=4, max_length=20, rngs=nnx.Rngs(0), num_landmarks=5
  )
  conv = attentions.build(
    "nystromformer",
    num_heads=2,
    head_dim=4,
    max_length=20,
    rngs=nnx.Rngs(0),
    num_landmarks=5,
    conv_kernel_size=3,
  )
  w = np.asarray(conv.conv.weight_HxK[...])  # [H, 3]
  vp = np.pad(np.asarray(v), ((0, 0), (1, 1), (0, 0), (0, 0)))
  expect = sum(w[None, None, :, t, None] * vp[:, t : t + 20] for t in range(3))
  run = nnx.jit(lambda m, q, k, v: m(q, k, v))
  np.testing.assert_allclose(run(conv, q, k, v) - run(plain, q, k, v), expect, atol=1e-5)


def test_performer_error_shrinks_as_features_grow():
  q, k, v = _qkv((1, 32, 2, 16), scale=0.5)
  exact = _dense_softmax(q, k, v)

  @functools.partial(jax.jit, static_argnums=1)
  def err(seed, m):
    proj = performer.orthogonal_features(jax.random.key(seed), m, 16)
    return jnp.mean(jnp.abs(performer.performer_attention(q, k, v, projection=proj) - exact))

  few = np.mean([float(err(s, 8)) for s in range(4)])
  many = np.mean([float(err(s, 256)) for s in range(4)])
  assert many < 0.5 * few, (few, many)
  assert many < 0.05


def test_performer_relu_kernel_runs_and_redraw_changes_features():
  layer = attentions.build(
    "performer", num_heads=2, head_dim=16, max_length=32, rngs=nnx.Rngs(0), num_features=32
  )
  before = np.asarray(layer.projection[...])
  layer.redraw(nnx.Rngs(1))
  assert not np.allclose(before, layer.projection[...])
  with pytest.raises(ValueError, match="kernel_type='tanh'"):
    attentions.build(
      "performer", num_heads=2, head_dim=16, max_length=32, rngs=nnx.Rngs(0), kernel_type="tanh"
    )


def test_linformer_short_input_equals_zero_padding_to_max_length():
  layer = attentions.build(
    "linformer", num_heads=2, head_dim=8, max_length=32, rngs=nnx.Rngs(0), projection_length=8
  )
  q, k, v = _qkv((1, 20, 2, 8))
  pad = lambda x: jnp.pad(x, ((0, 0), (0, 12), (0, 0), (0, 0)))
  mask = jnp.arange(32)[None, :] < 20
  short = nnx.jit(lambda m, q, k, v: m(q, k, v))(layer, q, k, v)
  padded = nnx.jit(lambda m, q, k, v, mask: m(q, k, v, mask))(layer, pad(q), pad(k), pad(v), mask)
  np.testing.assert_allclose(short, padded[:, :20], atol=1e-5)


def test_linformer_refuses_inputs_longer_than_max_length_and_bad_knobs():
  layer = attentions.build(
    "linformer", num_heads=2, head_dim=8, max_length=16, rngs=nnx.Rngs(0), projection_length=8
  )
  q, k, v = _qkv((1, 20, 2, 8))
  with pytest.raises(ValueError, match="max_length=16"):
    layer(q, k, v)
  with pytest.raises(ValueError, match="projection_length=0"):
    attentions.build(
      "linformer", num_heads=2, head_dim=8, max_length=16, rngs=nnx.Rngs(0), projection_length=0
    )
  separate = attentions.build(
    "linformer", num_heads=2, head_dim=8, max_length=16, rngs=nnx.Rngs(0), share_kv=False
  )
  assert separate.f_proj is not None


def test_soft_with_every_token_a_landmark_is_gaussian_kernel_attention():
  layer = attentions.build(
    "soft",
    num_heads=2,
    head_dim=8,
    max_length=16,
    rngs=nnx.Rngs(0),
    num_landmarks=16,
    landmark_pooling="mean",
    pinv_iterations=40,
  )
  q, _, v = _qkv((1, 16, 2, 8), scale=2.0)  # Spread-out points: a well-conditioned kernel.
  qs = q / 8**0.25
  sq = jnp.sum(jnp.square(qs[:, :, None] - qs[:, None, :]), axis=-1)  # [B, L, L, H]
  expect = jnp.einsum("blkh,bkhd->blhd", jnp.exp(-0.5 * sq), v)
  got = nnx.jit(lambda m, q, v: m(q, q, v))(layer, q, v)
  np.testing.assert_allclose(got, expect, atol=2e-3)


def test_soft_conv_landmarks_refuse_inputs_longer_than_max_length():
  layer = attentions.build(
    "soft", num_heads=2, head_dim=8, max_length=16, rngs=nnx.Rngs(0), num_landmarks=4
  )
  q, k, v = _qkv((1, 20, 2, 8))
  with pytest.raises(ValueError, match="max_length=16"):
    layer(q, k, v)
  with pytest.raises(ValueError, match="landmark_pooling='max'"):
    attentions.build(
      "soft", num_heads=2, head_dim=8, max_length=16, rngs=nnx.Rngs(0), landmark_pooling="max"
    )


def test_iterative_pinv_matches_numpy_pinv():
  a = jax.random.normal(jax.random.key(3), (2, 1, 6, 6)) + 4 * jnp.eye(6)[None, None]
  np.testing.assert_allclose(low_rank.iterative_pinv(a, 30, order=3), np.linalg.pinv(a), atol=1e-4)
  np.testing.assert_allclose(low_rank.iterative_pinv(a, 40, order=2), np.linalg.pinv(a), atol=1e-4)
