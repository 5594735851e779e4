"""LRA models in Flax NNX: a Transformer encoder classifier and the two-tower retrieval model.

The attention core of every block comes from the `mra_jax.attentions` registry, so any
registered method drops into the same encoder. The encoder follows the MRA paper's LRA model
(docs/lra.md, "Protocols"): token + position embeddings, pre-LN blocks, a final LN
multiplied by the mask, pooling, an MLP head. The original LRA model differs only in
settings (CLS pooling, sinusoidal positions, sizes), which `ModelConfig` carries.

Dropout keys are passed explicitly (`dropout_key`), so a training step is a pure function of
(parameters, batch, key) and a resumed run replays the same masks.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mra_jax import attentions, layout

POOLINGS = ("mean", "cls")
# "rope": rotary positions on q and k (the decoder of the LM task, `lra.decoder`).
POSITIONS = ("learned", "sinusoidal", "rope")
OBJECTIVES = ("classification", "next_token")
INTERACTIONS = ("nli", "concat")
TOKEN_ORDERS = ("row_major", "patch")  # After resolving "auto".
# Attentions whose blocks are 1-D token runs that the published image setting fills with
# 2-D patches (the published image setting, `input_shape=[32, 32]`).
PATCH_ORDER_ATTENTIONS = ("mra2", "mra2_s")


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


_FROM_RUN = {"from_run": True}  # Filled from the task and the run, not a config key.


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """Everything that fixes the model's shape and behaviour, validated on construction.

  The fields with defaults are the keys of a run config's `model` block (declared here
  only; `lra.run_config` builds the block from them); the others come from the task and the
  run (`lra.run_config.from_config_dict`).

  Attributes:
    num_layers: encoder blocks.
    embed_dim: residual width.
    qkv_dim: total query/key/value width (heads x head dim).
    num_heads: attention heads.
    mlp_dim: feed-forward hidden width (GELU).
    classifier_hidden: the head's hidden widths (ReLU).
    dropout_rate: embedding, residual and feed-forward dropout.
    pooling: "mean" (masked, divided by the length) or "cls".
    positions: "learned" or "sinusoidal" position embeddings (classifiers), "rope" rotary
      positions on queries and keys (the LM task's decoder, which needs them).
    embed_init_std: token-embedding initialisation stddev.
    qkv_bias: bias in the q/k/v/out projections.
    retrieval_interaction: two-tower head input: "nli" = [u, v, u*v, u-v], "concat" = [u, v].
    pretrained: a local folder of a transformers MRA checkpoint (config.json and weights):
      the classifier is then that encoder with a new head (`lra.pretrained`), sized as the
      checkpoint (the other keys of this block do not apply); "" trains from scratch.
  """

  num_layers: int = 2
  embed_dim: int = 64
  qkv_dim: int = 64
  num_heads: int = 2
  mlp_dim: int = 128
  classifier_hidden: tuple[int, ...] = (128,)
  dropout_rate: float = 0.1
  pooling: str = "mean"
  positions: str = "learned"
  embed_init_std: float = 0.02
  qkv_bias: bool = True
  retrieval_interaction: str = "nli"
  pretrained: str = ""
  # From the task and the run.
  # "classification": an encoder and a head (`build`); "next_token": a causal decoder.
  objective: str = dataclasses.field(default="classification", metadata=_FROM_RUN)
  vocab_size: int = dataclasses.field(metadata=_FROM_RUN)
  num_classes: int = dataclasses.field(metadata=_FROM_RUN)
  max_length: int = dataclasses.field(metadata=_FROM_RUN)
  attention: str = dataclasses.field(metadata=_FROM_RUN)
  dual_input: bool = dataclasses.field(default=False, metadata=_FROM_RUN)
  image_shape: tuple[int, int] | None = dataclasses.field(default=None, metadata=_FROM_RUN)
  # The attention's knobs dataclass (`mra_jax.attentions.make_knobs`); None: its defaults.
  attention_knobs: Any = dataclasses.field(default=None, metadata=_FROM_RUN)
  # "auto": patch order where it applies, else row-major.
  token_order: str = dataclasses.field(default="row_major", metadata=_FROM_RUN)
  # "float32" | "bfloat16" (or the jnp dtype); stored as a jnp dtype.
  dtype: Any = dataclasses.field(default="float32", metadata=_FROM_RUN)

  def __post_init__(self):
    # JSON and ConfigDicts hand sequences over as lists; the dataclass is frozen and hashed.
    object.__setattr__(self, "classifier_hidden", tuple(self.classifier_hidden))
    if self.image_shape is not None:
      object.__setattr__(self, "image_shape", tuple(self.image_shape))
    for name in (
      "vocab_size",
      "num_classes",
      "max_length",
      "num_layers",
      "embed_dim",
      "qkv_dim",
      "num_heads",
      "mlp_dim",
    ):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {name}={value!r}")
    if self.qkv_dim % self.num_heads:
      raise ValueError(
        f"qkv_dim must be divisible by num_heads; got qkv_dim={self.qkv_dim}, "
        f"num_heads={self.num_heads}"
      )
    if not all(isinstance(w, int) and w >= 1 for w in self.classifier_hidden):
      raise ValueError(f"classifier_hidden must hold positive ints; got {self.classifier_hidden=}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1); got dropout_rate={self.dropout_rate}")
    if self.attention_knobs is None:
      object.__setattr__(self, "attention_knobs", attentions.make_knobs(self.attention))
    elif not isinstance(self.attention_knobs, attentions.knobs_class(self.attention)):
      raise ValueError(
        f"attention_knobs must be attention {self.attention!r}'s "
        f"{attentions.knobs_class(self.attention).__name__}; got {self.attention_knobs!r}"
      )
    dtype_names = {jnp.dtype(v).name: v for v in DTYPES.values()}
    name = self.dtype if isinstance(self.dtype, str) else jnp.dtype(self.dtype).name
    if name not in dtype_names:
      raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got dtype={self.dtype!r}")
    object.__setattr__(self, "dtype", DTYPES[name])
    if self.token_order == "auto":
      object.__setattr__(self, "token_order", self._auto_token_order())
    for name, allowed in (
      ("objective", OBJECTIVES),
      ("pooling", POOLINGS),
      ("positions", POSITIONS),
      ("retrieval_interaction", INTERACTIONS),
      ("token_order", TOKEN_ORDERS),
    ):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name} must be one of {allowed}; got {name}={getattr(self, name)!r}")
    if (self.positions == "rope") != (self.objective == "next_token"):
      raise ValueError(
        "positions='rope' is the language-model decoder's, which takes no other; got "
        f"positions={self.positions!r} for objective={self.objective!r}"
      )
    if self.objective == "next_token":
      if self.pretrained:
        raise ValueError(
          "pretrained starts a classifier from an encoder checkpoint; the language-model "
          f"decoder trains from scratch: got pretrained={self.pretrained!r}"
        )
      object.__setattr__(
        self, "attention_knobs", causal_knobs(self.attention, self.attention_knobs)
      )
      if (self.qkv_dim // self.num_heads) % 2:
        raise ValueError(
          "rotary positions rotate pairs of dimensions: qkv_dim / num_heads must be even; got "
          f"qkv_dim={self.qkv_dim}, num_heads={self.num_heads}"
        )
    if self.token_order == "patch":
      if self.pooling == "cls":
        raise ValueError(
          "token_order='patch' needs pooling='mean' (a CLS token has no pixel); "
          f"got pooling={self.pooling!r}"
        )
      if self.image_shape is None or math.prod(self.image_shape) != self.max_length:
        raise ValueError(
          f"token_order='patch' needs an image task whose image covers "
          f"max_length; got image_shape={self.image_shape}, "
          f"max_length={self.max_length}"
        )

  def _auto_token_order(self) -> str:
    """Patch order for the attentions that profit from it, where the image fills the input."""
    fits = (
      self.image_shape is not None
      and self.pooling == "mean"
      and math.prod(self.image_shape) == self.max_length
    )
    return "patch" if fits and self.attention in PATCH_ORDER_ATTENTIONS else "row_major"

  @property
  def sequence_length(self) -> int:
    """Tokens the attention sees: max_length, +1 for the CLS token."""
    return self.max_length + (self.pooling == "cls")


def causal_attentions() -> list[str]:
  """The registered attentions with a causal form (an `is_causal` knob)."""
  return [n for n in attentions.names() if "is_causal" in attentions.knob_defaults(n)]


def causal_knobs(attention: str, knobs: Any) -> Any:
  """`knobs` with `is_causal=True` (a decoder's attention).

  Raises:
    ValueError: `attention` has no causal form (the message lists those that have one).
  """
  if "is_causal" not in attentions.knob_defaults(attention):
    raise ValueError(
      f"the language-model task needs a causal attention; attention={attention!r} has no "
      f"is_causal knob. Causal attentions: {causal_attentions()}"
    )
  return dataclasses.replace(knobs, is_causal=True)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Inverted dropout; identity when `key` is None (evaluation) or rate is 0."""
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def sinusoidal_positions(length: int, dim: int) -> jax.Array:
  """Fixed [length, dim] sin/cos table (Vaswani et al.; LRA's `learn_pos_emb=False`)."""
  pos_Lx1 = jnp.arange(length, dtype=jnp.float32)[:, None]
  freq_1xF = jnp.exp(-math.log(10_000.0) * jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angle_LxF = pos_Lx1 * freq_1xF[None, :]
  table = jnp.zeros((length, dim), jnp.float32)
  table = table.at[:, 0::2].set(jnp.sin(angle_LxF))
  return table.at[:, 1::2].set(jnp.cos(angle_LxF)[:, : dim // 2])


def _fold(key: jax.Array | None, *data: int) -> jax.Array | None:
  if key is None:
    return None
  for d in data:
    key = jax.random.fold_in(key, d)
  return key


class SelfAttention(nnx.Module):
  """q/k/v/out projections around a registry attention core."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.num_heads = cfg.num_heads
    self.head_dim = cfg.qkv_dim // cfg.num_heads
    dense = lambda fin, fout: nnx.Linear(
      fin, fout, use_bias=cfg.qkv_bias, dtype=cfg.dtype, rngs=rngs
    )
    self.query = dense(cfg.embed_dim, cfg.qkv_dim)
    self.key = dense(cfg.embed_dim, cfg.qkv_dim)
    self.value = dense(cfg.embed_dim, cfg.qkv_dim)
    self.out = dense(cfg.qkv_dim, cfg.embed_dim)
    self.core = attentions.build(
      cfg.attention,
      num_heads=cfg.num_heads,
      head_dim=self.head_dim,
      max_length=cfg.sequence_length,
      rngs=rngs,
      knobs=cfg.attention_knobs,
    )

  def __call__(self, x_BxLxE: jax.Array, mask_BxL: jax.Array) -> jax.Array:
    B, L, _ = x_BxLxE.shape
    heads = lambda y: y.reshape(B, L, self.num_heads, self.head_dim)
    o_BxLxHxD = self.core(
      heads(self.query(x_BxLxE)),
      heads(self.key(x_BxLxE)),
      heads(self.value(x_BxLxE)),
      mask=mask_BxL,
    )
    return self.out(o_BxLxHxD.reshape(B, L, -1).astype(x_BxLxE.dtype))


class EncoderBlock(nnx.Module):
  """Pre-LN block: x + Drop(Attn(LN(x))), then x + Drop(W2 Drop(GELU(W1 LN(x))))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.rate = cfg.dropout_rate
    self.ln_attention = nnx.LayerNorm(cfg.embed_dim, dtype=cfg.dtype, rngs=rngs)
    self.attention = SelfAttention(cfg, rngs=rngs)
    self.ln_mlp = nnx.LayerNorm(cfg.embed_dim, dtype=cfg.dtype, rngs=rngs)
    self.mlp_in = nnx.Linear(cfg.embed_dim, cfg.mlp_dim, dtype=cfg.dtype, rngs=rngs)
    self.mlp_out = nnx.Linear(cfg.mlp_dim, cfg.embed_dim, dtype=cfg.dtype, rngs=rngs)

  def __call__(self, x_BxLxE, mask_BxL, dropout_key):
    y = self.attention(self.ln_attention(x_BxLxE), mask_BxL)
    x_BxLxE = x_BxLxE + dropout(y, self.rate, _fold(dropout_key, 0))
    h = dropout(
      jax.nn.gelu(self.mlp_in(self.ln_mlp(x_BxLxE)), approximate=False),
      self.rate,
      _fold(dropout_key, 1),
    )
    return x_BxLxE + dropout(self.mlp_out(h), self.rate, _fold(dropout_key, 2))


class Encoder(nnx.Module):
  """Token ids [B, L] and mask [B, L] -> pooled features [B, E]."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.max_length = cfg.max_length
    self.embed_dim = cfg.embed_dim
    self.pooling = cfg.pooling
    self.token_order = cfg.token_order
    self.image_shape = cfg.image_shape
    self.rate = cfg.dropout_rate
    self.embed = nnx.Embed(
      cfg.vocab_size,
      cfg.embed_dim,
      dtype=cfg.dtype,
      embedding_init=nnx.initializers.normal(cfg.embed_init_std),
      rngs=rngs,
    )
    length = cfg.sequence_length
    if cfg.positions == "learned":
      self.position_LxE = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (length, cfg.embed_dim))
      )
    else:
      self.position_LxE = nnx.Variable(sinusoidal_positions(length, cfg.embed_dim))
    if cfg.pooling == "cls":
      self.cls_E = nnx.Param(jnp.zeros((cfg.embed_dim,), jnp.float32))
    self.blocks = nnx.List([EncoderBlock(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.ln_final = nnx.LayerNorm(cfg.embed_dim, dtype=cfg.dtype, rngs=rngs)

  def __call__(
    self, inputs_BxL: jax.Array, mask_BxL: jax.Array, dropout_key: jax.Array | None = None
  ) -> jax.Array:
    B, L = inputs_BxL.shape
    if L != self.max_length:
      raise ValueError(
        f"inputs must have length max_length={self.max_length}; got inputs.shape={inputs_BxL.shape}"
      )
    mask_BxL = mask_BxL.astype(bool)
    x_BxLxE = self.embed(inputs_BxL)
    if self.pooling == "cls":
      cls_Bx1xE = jnp.broadcast_to(
        self.cls_E[...].astype(x_BxLxE.dtype)[None, None, :], (B, 1, self.embed_dim)
      )
      x_BxLxE = jnp.concatenate([cls_Bx1xE, x_BxLxE], axis=1)
      mask_BxL = jnp.concatenate([jnp.ones((B, 1), bool), mask_BxL], axis=1)
    x_BxLxE = x_BxLxE + self.position_LxE[...].astype(x_BxLxE.dtype)[None, :, :]
    if self.token_order == "patch":
      # Every other layer is per token and mean pooling is order-free, so one reordering
      # here equals reordering around each attention (positions are already added).
      x_BxLxE = layout.to_patch_order(x_BxLxE, self.image_shape)
      mask_BxL = layout.to_patch_order(mask_BxL, self.image_shape)
    x_BxLxE = dropout(x_BxLxE, self.rate, _fold(dropout_key, 0, 0))
    for i, block in enumerate(self.blocks):
      x_BxLxE = block(x_BxLxE, mask_BxL, _fold(dropout_key, i + 1))
    x_BxLxE = self.ln_final(x_BxLxE) * mask_BxL[:, :, None].astype(x_BxLxE.dtype)
    if self.pooling == "cls":
      return x_BxLxE[:, 0, :]
    # As the MRA paper's model: padded tokens count as zeros, the divisor is the length.
    return x_BxLxE.mean(axis=1)


class MlpHead(nnx.Module):
  """Dense -> ReLU (per hidden width) -> Dense(num_classes)."""

  def __init__(
    self, in_features: int, hidden: tuple[int, ...], num_classes: int, dtype, *, rngs: nnx.Rngs
  ):
    widths = (in_features, *hidden)
    self.hidden = nnx.List(
      [nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in itertools.pairwise(widths)]
    )
    self.out = nnx.Linear(widths[-1], num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x_BxF: jax.Array) -> jax.Array:
    for layer in self.hidden:
      x_BxF = jax.nn.relu(layer(x_BxF))
    return self.out(x_BxF)


class Classifier(nnx.Module):
  """Single-input classifier: ids [B, L], mask [B, L] -> float32 logits [B, classes]."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.encoder = Encoder(cfg, rngs=rngs)
    self.head = MlpHead(cfg.embed_dim, cfg.classifier_hidden, cfg.num_classes, cfg.dtype, rngs=rngs)

  def __call__(self, inputs, mask, dropout_key=None):
    return self.head(self.encoder(inputs, mask, dropout_key)).astype(jnp.float32)


class DualClassifier(nnx.Module):
  """Two-tower matcher: ids [B, 2, L] -> logits [B, classes]; one encoder for both towers."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.interaction = cfg.retrieval_interaction
    self.encoder = Encoder(cfg, rngs=rngs)
    width = cfg.embed_dim * (4 if cfg.retrieval_interaction == "nli" else 2)
    self.head = MlpHead(width, cfg.classifier_hidden, cfg.num_classes, cfg.dtype, rngs=rngs)

  def __call__(self, inputs_Bx2xL, mask_Bx2xL, dropout_key=None):
    if inputs_Bx2xL.ndim != 3 or inputs_Bx2xL.shape[1] != 2:
      raise ValueError(f"retrieval inputs must be [B, 2, L]; got shape {inputs_Bx2xL.shape}")
    B = inputs_Bx2xL.shape[0]
    # Both documents in one encoder call: shared weights, one compiled pass; the towers get
    # different dropout masks because they are different rows.
    both_2BxE = self.encoder(
      inputs_Bx2xL.reshape(2 * B, -1), mask_Bx2xL.reshape(2 * B, -1), dropout_key
    )
    u_BxE, v_BxE = both_2BxE.reshape(B, 2, -1)[:, 0], both_2BxE.reshape(B, 2, -1)[:, 1]
    if self.interaction == "nli":
      features = jnp.concatenate([u_BxE, v_BxE, u_BxE * v_BxE, u_BxE - v_BxE], axis=-1)
    else:
      features = jnp.concatenate([u_BxE, v_BxE], axis=-1)
    return self.head(features).astype(jnp.float32)


def build(cfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module:
  """The task's model: `lra.decoder.Decoder` for next-token tasks, `DualClassifier` for
  pair inputs, `Classifier` otherwise, or with `cfg.pretrained` a checkpoint's encoder with
  a new head (`lra.pretrained`)."""
  if cfg.objective == "next_token":
    from lra import decoder  # pylint: disable=g-import-not-at-top  (it builds on this module)

    return decoder.Decoder(cfg, rngs=rngs)
  if cfg.pretrained:
    from lra import pretrained  # pylint: disable=g-import-not-at-top  (optional extra)

    return pretrained.PretrainedClassifier(cfg, rngs=rngs)
  return (DualClassifier if cfg.dual_input else Classifier)(cfg, rngs=rngs)
