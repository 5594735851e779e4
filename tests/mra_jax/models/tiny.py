"""Tiny MRA configs, inputs and checkpoints shared by the model tests.

One config serves most tests so that jax compiles its shapes once per session: 2 layers,
hidden 64, 4 heads (head dim 16, so transformers' pad-to-32 scale applies), max length 128,
one tile per block row (4 of the 9 tiles at length 96).
"""

from __future__ import annotations

import numpy as np

CONFIG = {
  "vocab_size": 99,
  "hidden_size": 64,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "intermediate_size": 37,
  "max_position_embeddings": 128,
  "type_vocab_size": 2,
  "block_per_row": 1,
}
NUM_LABELS = 3
LENGTH = 96
CLASS_NAMES = (
  "MraModel",
  "MraForMaskedLM",
  "MraForSequenceClassification",
  "MraForMultipleChoice",
  "MraForTokenClassification",
  "MraForQuestionAnswering",
)


def inputs(batch: int = 2, length: int = LENGTH, *, seed: int = 0, choices: int | None = None):
  """input_ids, attention_mask (each example padded by a different amount), token_type_ids.

  Row r (of the flattened batch) keeps `length - (21 * r) % 64` real tokens, so row 0 is
  unpadded and the others end at different points; int32 numpy arrays [batch, length], or
  [batch, choices, length] with `choices`.
  """
  rng = np.random.default_rng(seed)
  shape = (batch, length) if choices is None else (batch, choices, length)
  ids = rng.integers(0, CONFIG["vocab_size"], shape, dtype=np.int32)
  types = rng.integers(0, CONFIG["type_vocab_size"], shape, dtype=np.int32)
  rows = np.arange(int(np.prod(shape[:-1]))).reshape(shape[:-1])
  mask = (np.arange(length) < (length - (21 * rows) % 64)[..., None]).astype(np.int32)
  return ids, mask, types


def transformers_model(class_name: str, *, seed: int = 0, **overrides):
  """A transformers MRA model of `CONFIG` (plus overrides) whose weights are all random.

  transformers initialises biases to 0 and LayerNorm weights to 1; noise on every tensor makes
  a transposed or misplaced tensor show in the outputs.
  """
  import torch
  import transformers

  config = transformers.MraConfig(**{**CONFIG, "num_labels": NUM_LABELS, **overrides})
  torch.manual_seed(seed)
  model = getattr(transformers, class_name)(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model


def rel_err(ours, theirs) -> float:
  """max |ours - theirs| / max |theirs| (float64)."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def config(**overrides):
  """`CONFIG` (plus overrides) as the port's config."""
  from mra_jax.models import MraModelConfig

  return MraModelConfig(**{**CONFIG, **overrides}).replace(num_labels=NUM_LABELS)


def write_checkpoint(folder, class_name: str = "MraForMaskedLM", *, seed: int = 0, **overrides):
  """A random checkpoint as transformers would write it, made with numpy only (no jax work).

  The model is laid out abstractly to learn its parameter names and shapes; each tensor is
  normal(0, 0.05), plus 1 for LayerNorm weights. Returns the tensors written.
  """
  import json
  import os

  from flax import nnx
  from safetensors.numpy import save_file

  from mra_jax import models
  from mra_jax.models import convert

  cfg = config(**overrides).replace(architectures=(class_name,))
  abstract = nnx.eval_shape(lambda: models.ARCHITECTURES[class_name](cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  tensors = {}
  for path, variable in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
    key, transposed = convert.transformers_key(path)
    shape = tuple(variable.get_value().shape)
    value = rng.normal(0.0, 0.05, shape[::-1] if transposed else shape).astype(np.float32)
    tensors[key] = value + ("LayerNorm.weight" in key)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
    json.dump(cfg.to_dict(), f)
  save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
  return tensors
