"""Model outputs with transformers' field names (pytrees, so they pass through `jit`).

`hidden_states` is None unless the call asked for it with `output_hidden_states=True`; then it
holds the embedding output and every layer's output, num_hidden_layers + 1 arrays
[B, L, hidden_size]. transformers' `loss` and `attentions` fields are left out: MRA never forms
attention weights, and losses are the training loop's business here (docs/models.md).
"""

from __future__ import annotations

import jax
from flax import struct


@struct.dataclass
class BaseModelOutput:
  """`MraModel`: last_hidden_state [B, L, hidden_size]."""

  last_hidden_state: jax.Array
  hidden_states: tuple[jax.Array, ...] | None = None


@struct.dataclass
class MaskedLMOutput:
  """`MraForMaskedLM`: logits [B, L, vocab_size]."""

  logits: jax.Array
  hidden_states: tuple[jax.Array, ...] | None = None


@struct.dataclass
class SequenceClassifierOutput:
  """`MraForSequenceClassification`: logits [B, num_labels]."""

  logits: jax.Array
  hidden_states: tuple[jax.Array, ...] | None = None


@struct.dataclass
class MultipleChoiceModelOutput:
  """`MraForMultipleChoice`: logits [B, num_choices]."""

  logits: jax.Array
  hidden_states: tuple[jax.Array, ...] | None = None


@struct.dataclass
class TokenClassifierOutput:
  """`MraForTokenClassification`: logits [B, L, num_labels]."""

  logits: jax.Array
  hidden_states: tuple[jax.Array, ...] | None = None


@struct.dataclass
class QuestionAnsweringModelOutput:
  """`MraForQuestionAnswering`: start_logits and end_logits [B, L]."""

  start_logits: jax.Array
  end_logits: jax.Array
  hidden_states: tuple[jax.Array, ...] | None = None
