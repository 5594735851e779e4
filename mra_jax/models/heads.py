"""The task models over `MraModel`: transformers' MraFor* classes, same parameter names.

Each keeps its encoder at `self.mra` (transformers' `base_model_prefix`), so its parameters
carry transformers' `mra.` key prefix, and its head under transformers' attribute names.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mra_jax.models import outputs
from mra_jax.models.config import MraModelConfig
from mra_jax.models.modeling import LayerFactory, MraModel, RuntimeOptions, activation


class _TaskModel(nnx.Module):
  """The shared constructor: the encoder at `self.mra` plus `_build_head`'s modules."""

  def __init__(
    self,
    config: MraModelConfig,
    *,
    rngs: nnx.Rngs,
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    options: RuntimeOptions | None = None,
  ):
    self.config = config
    self.mra = MraModel(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype, options=options)
    self._build_head(LayerFactory(config, dtype, param_dtype), rngs)

  def _build_head(self, init: LayerFactory, rngs: nnx.Rngs) -> None:
    raise NotImplementedError

  def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, hidden):
    return self.mra(
      input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states=hidden
    )


class _PredictionHeadTransform(nnx.Module):
  def __init__(self, init: LayerFactory, rngs: nnx.Rngs):
    self.dense = init.linear(init.config.hidden_size, init.config.hidden_size, rngs)
    self.LayerNorm = init.layer_norm(rngs)
    self.hidden_act = init.config.hidden_act

  def __call__(self, h_BxLxE):
    return self.LayerNorm(activation(self.hidden_act)(self.dense(h_BxLxE)))


class _LMPredictionHead(nnx.Module):
  """transform -> decoder (the word embeddings, when tied) + its own output bias."""

  def __init__(self, init: LayerFactory, rngs: nnx.Rngs):
    cfg = init.config
    self.transform = _PredictionHeadTransform(init, rngs)
    self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), init.param_dtype))
    self.decoder = None
    if not cfg.tie_word_embeddings:
      self.decoder = nnx.Linear(
        cfg.hidden_size,
        cfg.vocab_size,
        use_bias=False,
        kernel_init=nnx.initializers.normal(cfg.initializer_range),
        dtype=init.dtype,
        param_dtype=init.param_dtype,
        rngs=rngs,
      )

  def __call__(self, h_BxLxE, word_embeddings: nnx.Embed):
    h = self.transform(h_BxLxE)
    logits = self.decoder(h) if self.decoder is not None else word_embeddings.attend(h)
    bias = self.bias[...].astype(logits.dtype)
    return logits + bias.reshape((1,) * (logits.ndim - 1) + bias.shape)


class _OnlyMLMHead(nnx.Module):
  def __init__(self, init: LayerFactory, rngs: nnx.Rngs):
    self.predictions = _LMPredictionHead(init, rngs)


class MraForMaskedLM(_TaskModel):
  """transformers' MraForMaskedLM: logits [B, L, vocab_size] (same constructor as MraModel)."""

  def _build_head(self, init, rngs):
    self.cls = _OnlyMLMHead(init, rngs)

  def __call__(
    self,
    input_ids,
    attention_mask=None,
    token_type_ids=None,
    position_ids=None,
    *,
    output_hidden_states: bool = False,
  ) -> outputs.MaskedLMOutput:
    """`MraModel.__call__`'s arguments -> `MaskedLMOutput` (logits [B, L, vocab_size])."""
    out = self._encode(
      input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states
    )
    logits = self.cls.predictions(out.last_hidden_state, self.mra.embeddings.word_embeddings)
    return outputs.MaskedLMOutput(logits=logits, hidden_states=out.hidden_states)


class _ClassificationHead(nnx.Module):
  """<s> token -> dropout -> dense -> hidden_act -> dropout -> out_proj."""

  def __init__(self, init: LayerFactory, rngs: nnx.Rngs):
    cfg = init.config
    self.dense = init.linear(cfg.hidden_size, cfg.hidden_size, rngs)
    self.dropout = init.dropout(rngs)
    self.out_proj = init.linear(cfg.hidden_size, cfg.num_labels, rngs)
    self.hidden_act = cfg.hidden_act

  def __call__(self, h_BxLxE):
    x = self.dense(self.dropout(h_BxLxE[:, 0]))
    return self.out_proj(self.dropout(activation(self.hidden_act)(x)))


class MraForSequenceClassification(_TaskModel):
  """transformers' MraForSequenceClassification: logits [B, num_labels] from the first token."""

  def _build_head(self, init, rngs):
    self.classifier = _ClassificationHead(init, rngs)

  def __call__(
    self,
    input_ids,
    attention_mask=None,
    token_type_ids=None,
    position_ids=None,
    *,
    output_hidden_states: bool = False,
  ) -> outputs.SequenceClassifierOutput:
    """`MraModel.__call__`'s arguments -> `SequenceClassifierOutput` (logits [B, num_labels])."""
    out = self._encode(
      input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states
    )
    logits = self.classifier(out.last_hidden_state)
    return outputs.SequenceClassifierOutput(logits=logits, hidden_states=out.hidden_states)


class MraForMultipleChoice(_TaskModel):
  """transformers' MraForMultipleChoice: inputs [B, C, L] -> logits [B, C]."""

  def _build_head(self, init, rngs):
    E = init.config.hidden_size
    self.pre_classifier = init.linear(E, E, rngs)
    self.classifier = init.linear(E, 1, rngs)

  def __call__(
    self,
    input_ids,
    attention_mask=None,
    token_type_ids=None,
    position_ids=None,
    *,
    output_hidden_states: bool = False,
  ) -> outputs.MultipleChoiceModelOutput:
    """Arguments as `MraModel.__call__` with a choices axis: [B, C, L] -> logits [B, C].

    hidden_states, when asked, are those of the flattened [B * C, L] batch (as transformers).
    """
    if input_ids.ndim != 3:
      raise ValueError(
        f"input_ids must be [batch, num_choices, length]; got input_ids.shape={input_ids.shape}"
      )
    B, C, _ = input_ids.shape
    flat = lambda x: None if x is None else x.reshape(-1, x.shape[-1])
    out = self._encode(
      flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
      output_hidden_states,
    )  # fmt: skip
    pooled = jax.nn.relu(self.pre_classifier(out.last_hidden_state[:, 0]))
    logits = self.classifier(pooled).reshape(B, C)
    return outputs.MultipleChoiceModelOutput(logits=logits, hidden_states=out.hidden_states)


class MraForTokenClassification(_TaskModel):
  """transformers' MraForTokenClassification: logits [B, L, num_labels]."""

  def _build_head(self, init, rngs):
    self.dropout = init.dropout(rngs)
    self.classifier = init.linear(init.config.hidden_size, init.config.num_labels, rngs)

  def __call__(
    self,
    input_ids,
    attention_mask=None,
    token_type_ids=None,
    position_ids=None,
    *,
    output_hidden_states: bool = False,
  ) -> outputs.TokenClassifierOutput:
    """`MraModel.__call__`'s arguments -> `TokenClassifierOutput` (logits [B, L, num_labels])."""
    out = self._encode(
      input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states
    )
    logits = self.classifier(self.dropout(out.last_hidden_state))
    return outputs.TokenClassifierOutput(logits=logits, hidden_states=out.hidden_states)


class MraForQuestionAnswering(_TaskModel):
  """transformers' MraForQuestionAnswering: span start and end logits [B, L] each."""

  def _build_head(self, init, rngs):
    # transformers forces num_labels = 2 here (start, end), whatever the config says.
    self.qa_outputs = init.linear(init.config.hidden_size, 2, rngs)

  def __call__(
    self,
    input_ids,
    attention_mask=None,
    token_type_ids=None,
    position_ids=None,
    *,
    output_hidden_states: bool = False,
  ) -> outputs.QuestionAnsweringModelOutput:
    """`MraModel.__call__`'s arguments -> start_logits and end_logits [B, L]."""
    out = self._encode(
      input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states
    )
    logits_BxLx2 = self.qa_outputs(out.last_hidden_state)
    return outputs.QuestionAnsweringModelOutput(
      start_logits=logits_BxLx2[..., 0],
      end_logits=logits_BxLx2[..., 1],
      hidden_states=out.hidden_states,
    )
