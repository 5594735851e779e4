"""The encoder classifier and the two-tower model: masks, pooling, token order, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lra import models
from mra_jax import attentions


@nnx.jit
def _apply(model, ids, mask):
  return model(ids, mask)


def _cfg(**kw):
  base = dict(
    vocab_size=20,
    num_classes=3,
    max_length=64,
    attention="softmax",
    num_layers=1,
    embed_dim=16,
    qkv_dim=16,
    num_heads=2,
    mlp_dim=32,
    classifier_hidden=(8,),
    dropout_rate=0.1,
    pooling="mean",
    positions="learned",
    embed_init_std=0.02,
    qkv_bias=True,
    retrieval_interaction="nli",
  )
  return models.ModelConfig(**{**base, **kw})


def _batch(shape, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, 20, shape).astype(np.int32)
  lengths = rng.integers(5, shape[-1], shape[:-1])
  mask = np.arange(shape[-1]) < lengths[..., None]
  return jnp.asarray(np.where(mask, ids, 0)), jnp.asarray(mask)


@pytest.mark.parametrize("pooling,positions", [("mean", "learned"), ("cls", "sinusoidal")])
def test_padding_does_not_change_logits(pooling, positions):
  model = models.build(_cfg(pooling=pooling, positions=positions), rngs=nnx.Rngs(0))
  ids, mask = _batch((3, 64))
  logits = _apply(model, ids, mask)
  assert logits.shape == (3, 3) and logits.dtype == jnp.float32
  garbage = jnp.where(mask, ids, 7)  # Other ids behind the mask.
  np.testing.assert_allclose(_apply(model, garbage, mask), logits, rtol=1e-5, atol=1e-6)


def test_two_tower_shares_one_encoder_and_reads_u_v_products():
  cfg = _cfg(dual_input=True)
  model = models.build(cfg, rngs=nnx.Rngs(0))
  single = models.build(_cfg(), rngs=nnx.Rngs(0))
  count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m.encoder, nnx.Param)))
  assert count(model) == count(single)  # One set of encoder weights for both towers.
  assert model.head.hidden[0].kernel.shape == (4 * cfg.embed_dim, 8)  # [u, v, u*v, u-v]
  ids, mask = _batch((2, 2, 64))

  @nnx.jit  # one program each: op-by-op dispatch of the model costs far more
  def both_ways(model, ids, mask):
    # Each tower equals the encoder applied to its own document.
    u = model.encoder(ids[:, 0], mask[:, 0])
    v = model.encoder(ids[:, 1], mask[:, 1])
    return model(ids, mask), model.head(jnp.concatenate([u, v, u * v, u - v], axis=-1))

  logits, expected = both_ways(model, ids, mask)
  assert logits.shape == (2, 3)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
  concat = models.build(_cfg(dual_input=True, retrieval_interaction="concat"), rngs=nnx.Rngs(0))
  assert concat.head.hidden[0].kernel.shape == (2 * cfg.embed_dim, 8)


def test_patch_order_is_invisible_to_permutation_equivariant_attention():
  kw = dict(max_length=64, image_shape=(8, 8))
  row = models.build(_cfg(token_order="row_major", **kw), rngs=nnx.Rngs(0))
  patch = models.build(_cfg(token_order="patch", **kw), rngs=nnx.Rngs(0))
  ids, mask = _batch((2, 64))
  np.testing.assert_allclose(_apply(row, ids, mask), _apply(patch, ids, mask), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="token_order='patch'"):
    _cfg(token_order="patch", max_length=63, image_shape=(8, 8))


def test_dropout_is_a_function_of_the_key():
  model = models.build(_cfg(dropout_rate=0.5), rngs=nnx.Rngs(0))
  ids, mask = _batch((2, 64))
  a = model(ids, mask, jax.random.key(1))
  np.testing.assert_array_equal(a, model(ids, mask, jax.random.key(1)))
  assert not np.allclose(a, model(ids, mask, jax.random.key(2)))
  assert not np.allclose(a, model(ids, mask))


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = models.build(_cfg(dtype=jnp.bfloat16), rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  ids, mask = _batch((2, 64))
  logits = _apply(model, ids, mask)
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))


@pytest.mark.parametrize(
  "bad,match",
  [
    (dict(qkv_dim=15), "qkv_dim"),
    (dict(pooling="max"), "pooling"),
    (dict(dropout_rate=1.0), "dropout_rate"),
    (dict(num_layers=0), "num_layers"),
    (dict(classifier_hidden=(8, 0)), "classifier_hidden"),
    (dict(attention="no_such_attention"), "no_such_attention"),
    (dict(attention_knobs=attentions.make_knobs("local")), "SoftmaxKnobs"),
    (dict(dtype="float16"), "dtype='float16'"),
    (dict(token_order="diagonal"), "token_order='diagonal'"),
  ],
)
def test_bad_model_config_raises(bad, match):
  with pytest.raises(ValueError, match=match):
    _cfg(**bad)


def test_auto_token_order_picks_patches_only_where_they_apply():
  image = dict(max_length=64, image_shape=(8, 8), token_order="auto")
  assert _cfg(attention="mra2", **image).token_order == "patch"
  assert _cfg(attention="softmax", **image).token_order == "row_major"
  assert _cfg(attention="mra2", pooling="cls", **image).token_order == "row_major"
  assert _cfg(attention="mra2", token_order="auto").token_order == "row_major"  # No image.


def test_config_from_json_lists_is_hashable_and_equal():
  a = _cfg(classifier_hidden=[8], image_shape=[8, 8], dtype="float32")
  assert a == _cfg(image_shape=(8, 8), dtype=jnp.float32) and a.dtype == jnp.float32
  assert a.classifier_hidden == (8,) and a.image_shape == (8, 8)


def test_wrong_length_raises():
  model = models.build(_cfg(), rngs=nnx.Rngs(0))
  ids, mask = _batch((2, 32))
  with pytest.raises(ValueError, match="max_length=64"):
    model(ids, mask)
