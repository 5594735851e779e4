"""Fine-tuning in the harness: a classifier started from a pretrained MRA checkpoint."""

import numpy as np
import pytest
from flax import nnx

from lra import models, run_config
from mra_jax import models as mra_models

from . import train_test  # pylint: disable=relative-beyond-top-level

# Tiny and byte-sized: the text task's ids (bytes + 1) are this vocabulary's.
CHECKPOINT = dict(
  vocab_size=260,
  hidden_size=32,
  num_hidden_layers=1,
  num_attention_heads=2,
  intermediate_size=48,
  max_position_embeddings=64,
  block_per_row=1,
  architectures=("MraForMaskedLM",),
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A masked-LM snapshot with random weights, written by `save_pretrained`."""
  folder = tmp_path_factory.mktemp("mra_tiny")
  config = mra_models.MraModelConfig(**CHECKPOINT)
  mra_models.save_pretrained(mra_models.MraForMaskedLM(config, rngs=nnx.Rngs(3)), folder)
  return str(folder)


def test_text_classifier_starts_from_the_checkpoint_and_trains(prepared, checkpoint, tmp_path):
  config = train_test.tiny_config("text", prepared("text"), num_train_steps=2)
  config.model.pretrained = checkpoint
  run = run_config.from_config_dict(config)
  model = models.build(run.model, rngs=nnx.Rngs(0))
  stored = mra_models.from_pretrained(checkpoint)  # the masked-LM it was saved as
  np.testing.assert_array_equal(
    model.model.mra.embeddings.word_embeddings.embedding[...],
    stored.mra.embeddings.word_embeddings.embedding[...],
  )
  assert model.model.classifier.out_proj.kernel.shape == (32, 2)  # the task's two classes
  results = train_test._train(config, str(tmp_path))  # pylint: disable=protected-access
  assert results["num_test_examples"] == 48 and np.isfinite(results["test_loss"])
  assert results["config"]["model"]["pretrained"] == checkpoint


def test_what_the_checkpoint_cannot_take_is_named(prepared, checkpoint, tmp_path):
  small_vocab = tmp_path / "small_vocab"
  config = mra_models.MraModelConfig(**{**CHECKPOINT, "vocab_size": 100})
  mra_models.save_pretrained(mra_models.MraForMaskedLM(config, rngs=nnx.Rngs(0)), small_vocab)
  for task, folder, message in (
    ("text", str(small_vocab), "past the vocabulary of model.pretrained"),
    ("retrieval", checkpoint, "single-input classifier"),
  ):
    config = train_test.tiny_config(task, prepared(task))
    config.model.pretrained = folder
    with pytest.raises(ValueError, match=message):
      models.build(run_config.from_config_dict(config).model, rngs=nnx.Rngs(0))
