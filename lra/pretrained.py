"""A harness classifier started from a pretrained MRA checkpoint (transformers' MRA family).

With `model.pretrained=FOLDER` (a local snapshot: config.json and model.safetensors or
pytorch_model.bin) the run's model is that checkpoint's encoder with a new classification
head of the task's classes: `mra_jax.models.from_pretrained(FOLDER,
architecture="MraForSequenceClassification", num_labels=...)`, with MRA's tile budget taken
from the runtime length (the checkpoint's block_per_row per block row) and the new head
initialised as `from_pretrained` does (seed 0). Its sizes are the
checkpoint's, so the `model` block's widths and depths do not apply; the task's token ids are
fed as they are, so they must be ids of the checkpoint's vocabulary. The encoder runs
without dropout (the harness's per-step dropout keys do not reach transformers' layers).
See docs/models.md, "Fine-tuning in the harness".
"""
# pylint: disable=invalid-name

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class PretrainedClassifier(nnx.Module):
  """ids [B, L] and mask [B, L] -> float32 logits [B, classes], from a checkpoint's encoder."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    del rngs  # the encoder comes from the checkpoint, the head from from_pretrained's seed
    from mra_jax import models  # pylint: disable=g-import-not-at-top  (optional extra)

    if cfg.dual_input:
      raise ValueError(
        f"model.pretrained starts a single-input classifier; the task is a pair task "
        f"(dual_input), got model.pretrained={cfg.pretrained!r}"
      )
    self.model = models.from_pretrained(
      cfg.pretrained,
      architecture="MraForSequenceClassification",
      num_labels=cfg.num_classes,
      dtype=cfg.dtype,
      param_dtype=jnp.float32,
      budget="runtime",
    )
    checkpoint = self.model.config
    if cfg.vocab_size > checkpoint.vocab_size:
      raise ValueError(
        f"the task's token ids go up to {cfg.vocab_size - 1}, past the vocabulary of "
        f"model.pretrained={cfg.pretrained!r} (vocab_size={checkpoint.vocab_size})"
      )
    # Position ids are 2 .. L + 1 (transformers' RoBERTa convention) in a table of
    # max_position_embeddings + 2 rows.
    if cfg.sequence_length > checkpoint.max_position_embeddings:
      raise ValueError(
        f"max_length={cfg.max_length} is longer than model.pretrained={cfg.pretrained!r} "
        f"has positions for (max_position_embeddings={checkpoint.max_position_embeddings})"
      )

  def __call__(self, inputs_BxL, mask_BxL, dropout_key=None) -> jax.Array:
    del dropout_key  # the encoder runs without dropout (see the module doc)
    out = self.model(inputs_BxL, mask_BxL.astype(jnp.int32))
    return out.logits.astype(jnp.float32)
