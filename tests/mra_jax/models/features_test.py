"""What the port does beyond transformers' MRA: CPU, any length, bfloat16, jit, grad, sharding,
fine-tuning with optax. No torch needed: checkpoints are written with numpy (`tiny.py`).
"""
# pylint: disable=invalid-name

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from mra_jax import models
from tests.mra_jax.models import tiny


@pytest.fixture(scope="module")
def masked_lm(tmp_path_factory):
  folder = tmp_path_factory.mktemp("masked_lm")
  tiny.write_checkpoint(folder, "MraForMaskedLM")
  return folder


def _call(model, ids, mask, types, **kwargs):
  return model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types), **kwargs)


def test_on_cpu_attention_is_computed_and_is_softmax_at_a_full_budget(tmp_path):
  # 4 tiles per block row of 4 = every tile: MRA-2 is then exact softmax attention, here with
  # transformers' 1/sqrt(32) scale for head dim 16 (its pad-to-32 quirk).
  tiny.write_checkpoint(tmp_path, "MraModel", block_per_row=4)
  model = models.from_pretrained(tmp_path)
  layer = model.encoder.layer[0].attention.self
  _, mask, _ = tiny.inputs()
  x_BxLxE = jax.random.normal(jax.random.key(0), (2, tiny.LENGTH, 64))
  ours = layer(x_BxLxE, jnp.asarray(mask, bool))

  heads = lambda dense: dense(x_BxLxE).reshape(2, tiny.LENGTH, 4, 16)
  keys_BxHxLqxLk = jnp.asarray(mask, bool)[:, None, None, :]
  dense = jax.nn.dot_product_attention(
    heads(layer.query), heads(layer.key), heads(layer.value), mask=keys_BxHxLqxLk,
    scale=1 / math.sqrt(32),
  )  # fmt: skip
  dense = dense.reshape(2, tiny.LENGTH, 64) * mask[..., None]
  assert float(jnp.abs(ours).max()) > 0.1
  assert tiny.rel_err(ours, dense) < 1e-5


def test_any_length_equals_the_same_tokens_padded_to_a_block_multiple(masked_lm):
  model = models.from_pretrained(masked_lm)
  ids, mask, types = tiny.inputs()
  # jit for a length no other test runs: one compile rather than op by op.
  short = nnx.jit(_call)(model, ids[:, :70], mask[:, :70], types[:, :70]).logits
  padded = _call(model, ids, mask * (np.arange(tiny.LENGTH) < 70), types).logits
  assert short.shape == (2, 70, tiny.CONFIG["vocab_size"])
  assert tiny.rel_err(short, padded[:, :70]) < 1e-5


def test_bfloat16_stays_close_to_float32(masked_lm):
  ids, mask, types = tiny.inputs()
  f32 = _call(models.from_pretrained(masked_lm), ids, mask, types).logits
  model = models.from_pretrained(masked_lm, dtype=jnp.bfloat16)
  assert model.mra.embeddings.word_embeddings.embedding[...].dtype == jnp.bfloat16
  bf16 = nnx.jit(_call)(model, ids, mask, types).logits  # jit: no other test runs bf16
  assert bf16.dtype == jnp.bfloat16
  assert tiny.rel_err(bf16, f32) < 3e-2


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_jit_over_batch_sharded_inputs_equals_eager(masked_lm, axis_type):
  model = models.from_pretrained(masked_lm)
  ids, mask, types = map(jnp.asarray, tiny.inputs())
  eager = model(ids, mask, types).logits
  mesh = jax.make_mesh((2,), ("data",), axis_types=(axis_type,), devices=jax.devices()[:2])
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
  sharded = nnx.jit(lambda m, *args: m(*args).logits)(model, shard(ids), shard(mask), shard(types))
  assert sharded.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), sharded.ndim)
  assert tiny.rel_err(sharded, eager) < 1e-5


def test_a_classifier_from_a_masked_lm_checkpoint_fine_tunes_with_optax(masked_lm):
  model = models.from_pretrained(
    masked_lm, architecture="MraForSequenceClassification", num_labels=tiny.NUM_LABELS
  )
  stored = tiny.write_checkpoint(masked_lm / "again", "MraForMaskedLM")  # same seed: same data
  loaded = model.mra.embeddings.word_embeddings.embedding[...]
  np.testing.assert_array_equal(loaded, stored["mra.embeddings.word_embeddings.weight"])
  assert model.classifier.out_proj.kernel[...].shape == (64, tiny.NUM_LABELS)

  model.train()  # dropout on
  optimizer = nnx.Optimizer(model, optax.adamw(3e-3), wrt=nnx.Param)
  ids, mask, types = map(jnp.asarray, tiny.inputs())
  labels = jnp.array([0, 2])

  @nnx.jit
  def step(model, optimizer):
    def loss_fn(model):
      logits = model(ids, mask, types).logits
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss, grads

  loss, grads = step(model, optimizer)
  for path, g in nnx.to_flat_state(grads):  # gradients reach every parameter
    g = np.asarray(g[...])  # numpy: eager jnp would compile one check per shape
    assert np.isfinite(g).all() and np.abs(g).max() > 0, path
  losses = [float(loss)] + [float(step(model, optimizer)[0]) for _ in range(7)]
  assert losses[-1] < 0.7 * losses[0], losses


def test_budget_rules(masked_lm):
  # transformers fixes the budget from max_position_embeddings (128 // 32 * 1 = 4 tiles);
  # "runtime" takes block_per_row tiles per query block row of each input.
  fixed = models.from_pretrained(masked_lm).mra.encoder.layer[0].attention.self
  runtime = models.from_pretrained(masked_lm, budget="runtime").mra.encoder.layer[0]
  assert dict(fixed.mra_kwargs)["num_blocks"] == 4
  assert dict(runtime.attention.self.mra_kwargs)["block_per_row"] == 1
  assert "num_blocks" not in dict(runtime.attention.self.mra_kwargs)
  with pytest.raises(ValueError, match="budget"):
    models.from_pretrained(masked_lm, budget="length")


def test_bfloat16_weights_save_and_load(masked_lm, tmp_path):
  model = models.from_pretrained(masked_lm, dtype=jnp.bfloat16)
  models.save_pretrained(model, tmp_path)
  assert '"dtype": "bfloat16"' in (tmp_path / "config.json").read_text()
  again = models.from_pretrained(tmp_path)  # float32 compute, weights as stored
  stored = model.cls.predictions.transform.dense.kernel[...]
  loaded = again.cls.predictions.transform.dense.kernel[...]
  assert loaded.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(loaded), np.asarray(stored, np.float32))
