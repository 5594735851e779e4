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
  """The encoder at `self.mra` plus a head (`_build_head`, `_head`), called as `MraModel`."""

  def __init__(
    self,
    config: MraModelConfig,
    *,
    rngs: nnx.Rngs,
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    options: RuntimeOptions | None = None,
  ):
    """Arguments as `MraModel`'s."""
    self.config = config
    self.mra = MraModel(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype, options=options)
    self._build_head(LayerFactory(config, dtype, param_dtype), rngs)

  def _build_head(self, init: LayerFactory, rngs: nnx.Rngs) -> None:
    raise NotImplementedError

  def _head(self, h_BxLxE: jax.Array, hidden_states):
    """The encoder's last hidden state (and hidden_states) -> the class's output."""
    raise NotImplementedError

  def __call__(
    self,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    token_type_ids: jax.Array | None = None,
    position_ids: jax.Array | None = None,
    *,
    output_hidden_states: bool = False,
  ):
    """Arguments as `MraModel.__call__`; returns the class's output dataclass."""
    out = self.mra(
      input_ids,
      attention_mask,
      token_type_ids,
      position_ids,
      output_hidden_states=output_hidden_states,
    )
    return self._head(out.last_hidden_state, out.hidden_states)


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

  def _head(self, h_BxLxE, hidden_states) -> outputs.MaskedLMOutput:
    logits = self.cls.predictions(h_BxLxE, self.mra.embeddings.word_embeddings)
    return outputs.MaskedLMOutput(logits=logits, hidden_states=hidden_states)


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

  def _head(self, h_BxLxE, hidden_states) -> outputs.SequenceClassifierOutput:
    logits = self.classifier(h_BxLxE)
    return outputs.SequenceClassifierOutput(logits=logits, hidden_states=hidden_states)


class MraForMultipleChoice(_TaskModel):
  """transformers' MraForMultipleChoice: inputs [B, C, L] -> logits [B, C]."""

  def _build_head(self, init, rngs):
    E = init.config.hidden_size
    self.pre_classifier = init.linear(E, E, rngs)
    self.classifier = init.linear(E, 1, rngs)

  def _head(self, h_BxLxE, hidden_states) -> outputs.MultipleChoiceModelOutput:
    logits = self.classifier(jax.nn.relu(self.pre_classifier(h_BxLxE[:, 0])))[:, 0]
    return outputs.MultipleChoiceModelOutput(logits=logits, hidden_states=hidden_states)

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
    out = super().__call__(
      flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
      output_hidden_states=output_hidden_states,
    )  # fmt: skip
    return out.replace(logits=out.logits.reshape(B, C))


class MraForTokenClassification(_TaskModel):
  """transformers' MraForTokenClassification: logits [B, L, num_labels]."""

  def _build_head(self, init, rngs):
    self.dropout = init.dropout(rngs)
    self.classifier = init.linear(init.config.hidden_size, init.config.num_labels, rngs)

  def _head(self, h_BxLxE, hidden_states) -> outputs.TokenClassifierOutput:
    logits = self.classifier(self.dropout(h_BxLxE))
    return outputs.TokenClassifierOutput(logits=logits, hidden_states=hidden_states)


class MraForQuestionAnswering(_TaskModel):
  """transformers' MraForQuestionAnswering: span start and end logits [B, L] each."""

  def _build_head(self, init, rngs):
    # transformers forces num_labels = 2 here (start, end), whatever the config says.
    self.qa_outputs = init.linear(init.config.hidden_size, 2, rngs)

  def _head(self, h_BxLxE, hidden_states) -> outputs.QuestionAnsweringModelOutput:
    logits_BxLx2 = self.qa_outputs(h_BxLxE)
    return outputs.QuestionAnsweringModelOutput(
      start_logits=logits_BxLx2[..., 0],
      end_logits=logits_BxLx2[..., 1],
      hidden_states=hidden_states,
    )
