"""`MraModel`: transformers' MRA encoder (RoBERTa-shaped, post-LayerNorm) in Flax NNX.

Attribute names mirror transformers' module tree (`embeddings.word_embeddings`,
`encoder.layer[i].attention.self.query`, `...LayerNorm`), so a parameter's NNX path is its
transformers key with `.weight` renamed; `convert.py` relies on this to map checkpoints both
ways without a table. The attention core is `mra_jax.mra_attention`.

What follows transformers (and why) and what does not is listed in docs/models.md; in short,
the model computes what transformers' MraModel computes with its CUDA kernel, at any length,
on any platform, in float32 or bfloat16.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

import mra_jax
from mra_jax.checks import check_choice
from mra_jax.models.config import BLOCK_SIZE, MIN_HEAD_DIM, MraModelConfig
from mra_jax.models.outputs import BaseModelOutput

# transformers' position ids start at 2 (RoBERTa's padding_idx + 1), whatever the padding.
POSITION_OFFSET = 2
BUDGETS = ("max_position", "runtime")
MASK_LAYOUTS = ("per_example", "transformers")

_ACTIVATIONS = {
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
  "relu": jax.nn.relu,
  "silu": jax.nn.silu,
  "tanh": jnp.tanh,
}


def activation(name: str):
  """transformers' ACT2FN[name] for the activations `MraModelConfig` admits."""
  return _ACTIVATIONS[name]


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
  """How the model runs, beyond what config.json fixes (static, hashable).

  Attributes:
    budget: "max_position" (transformers': `(max_position_embeddings // 32) * block_per_row`
      tiles per (batch, head), capped at the grid, whatever the input length) or "runtime"
      (`block_per_row` tiles per query block row of the actual input).
    impl: `mra_attention`'s implementation ("auto", "reference", "xla_chunked",
      "pallas_triton", "pallas_mosaic_tpu").
    precision: `mra_attention`'s float32 dot precision of the Pallas kernels (None: default).
    mask_layout: "per_example" (each example's heads use its own padding mask) or
      "transformers" (head h of example b uses the mask of example `(b * H + h) % B`, as
      transformers' MraSelfAttention lays the mask out; for parity tests on padded batches).
  """

  budget: str = "max_position"
  impl: str = "auto"
  precision: str | None = None
  mask_layout: str = "per_example"

  def __post_init__(self):
    check_choice("budget", self.budget, BUDGETS)
    # The attention's own config checks impl and precision, with its messages.
    mra_jax.MraConfig(impl=self.impl, precision=self.precision)
    check_choice("mask_layout", self.mask_layout, MASK_LAYOUTS)


@dataclasses.dataclass(frozen=True)
class LayerFactory:
  """transformers' initialisation (normal(0, initializer_range) weights) and the dtypes."""

  config: MraModelConfig
  dtype: jnp.dtype | None
  param_dtype: jnp.dtype

  def linear(self, fin: int, fout: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
      fin,
      fout,
      kernel_init=nnx.initializers.normal(self.config.initializer_range),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      rngs=rngs,
    )

  def embed(self, num: int, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(
      num,
      self.config.hidden_size,
      embedding_init=nnx.initializers.normal(self.config.initializer_range),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      rngs=rngs,
    )

  def layer_norm(self, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance, as torch's LayerNorm: the one-pass E[x^2] - E[x]^2 loses digits.
    return nnx.LayerNorm(
      self.config.hidden_size,
      epsilon=self.config.layer_norm_eps,
      use_fast_variance=False,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      rngs=rngs,
    )

  def dropout(self, rngs: nnx.Rngs) -> nnx.Dropout:
    return nnx.Dropout(self.config.hidden_dropout_prob, rngs=rngs)


class Embeddings(nnx.Module):
  """Word + position + token-type embeddings, LayerNorm, dropout."""

  def __init__(self, init: LayerFactory, rngs: nnx.Rngs):
    cfg = init.config
    self.max_positions = cfg.max_position_embeddings
    self.word_embeddings = init.embed(cfg.vocab_size, rngs)
    # transformers' table has max_position_embeddings + 2 rows (ids start at 2).
    self.position_embeddings = init.embed(cfg.max_position_embeddings + POSITION_OFFSET, rngs)
    self.token_type_embeddings = init.embed(cfg.type_vocab_size, rngs)
    self.LayerNorm = init.layer_norm(rngs)
    self.dropout = init.dropout(rngs)

  def __call__(self, input_ids_BxL, token_type_ids_BxL, position_ids_BxL) -> jax.Array:
    L = input_ids_BxL.shape[1]
    if position_ids_BxL is None:
      if L > self.max_positions:
        raise ValueError(
          f"input_ids is longer than the position table: length {L} > "
          f"max_position_embeddings={self.max_positions}"
        )
      position_ids_BxL = (jnp.arange(L) + POSITION_OFFSET)[None, :]
    if token_type_ids_BxL is None:
      token_type_ids_BxL = jnp.zeros_like(input_ids_BxL)
    x = _lookup(self.word_embeddings, input_ids_BxL)
    x = x + _lookup(self.token_type_embeddings, token_type_ids_BxL)
    x = x + jnp.broadcast_to(_lookup(self.position_embeddings, position_ids_BxL), x.shape)
    return self.dropout(self.LayerNorm(x))


def _lookup(embed: nnx.Embed, ids_BxL: jax.Array) -> jax.Array:
  """`embed(ids_BxL)`, also under Explicit mesh axes, where a gather from a replicated table
  must be told its output sharding: the ids' (batch-sharded inputs give batch-sharded rows)."""
  table = embed.embedding[...]
  table = table.astype(embed.dtype or table.dtype)
  sharding = jax.typeof(ids_BxL).sharding
  spec = getattr(sharding, "spec", ())
  if any(axis is not None for axis in spec):
    return table.at[ids_BxL].get(out_sharding=sharding.update(spec=P(*spec, None)))
  return jnp.take(table, ids_BxL, axis=0)


class SelfAttention(nnx.Module):
  """q, k, v projections (with bias) and `mra_attention`; transformers' MraSelfAttention."""

  def __init__(self, init: LayerFactory, options: RuntimeOptions, rngs: nnx.Rngs):
    cfg = init.config
    E = cfg.hidden_size
    self.num_heads = cfg.num_attention_heads
    self.head_dim = cfg.head_dim
    self.options = options
    mra_kwargs = {
      "block_size": BLOCK_SIZE,
      "approx_mode": cfg.approx_mode,
      "initial_prior_first_n_blocks": cfg.initial_prior_first_n_blocks,
      "initial_prior_diagonal_n_blocks": cfg.initial_prior_diagonal_n_blocks,
      "impl": options.impl,
      "precision": options.precision,
    }
    if options.budget == "max_position":
      if cfg.max_position_embeddings < BLOCK_SIZE:
        raise ValueError(
          f"budget='max_position' needs max_position_embeddings >= {BLOCK_SIZE}; got "
          f"max_position_embeddings={cfg.max_position_embeddings} (use budget='runtime')"
        )
      mra_kwargs["num_blocks"] = cfg.max_position_budget
    else:
      mra_kwargs["block_per_row"] = cfg.block_per_row
    # A tuple, not a dict: NNX keeps it as static (hashed) metadata of the module.
    self.mra_kwargs = tuple(sorted(mra_kwargs.items()))
    self.query = init.linear(E, E, rngs)
    self.key = init.linear(E, E, rngs)
    self.value = init.linear(E, E, rngs)

  def __call__(self, x_BxLxE: jax.Array, mask_BxL: jax.Array | None) -> jax.Array:
    B, L, _ = x_BxLxE.shape
    H, D = self.num_heads, self.head_dim
    split = lambda y: y.reshape(B, L, H, D)
    q_BxLxHxD = split(self.query(x_BxLxE))
    k_BxLxHxD = split(self.key(x_BxLxE))
    v_BxLxHxD = split(self.value(x_BxLxE))
    if D < MIN_HEAD_DIM:
      # transformers zero-pads such heads to 32 dims, so its logits are scaled by 1/sqrt(32)
      # rather than 1/sqrt(D); scaling the queries gives the same logits without the padding.
      q_BxLxHxD = q_BxLxHxD * jnp.asarray(math.sqrt(D / MIN_HEAD_DIM), q_BxLxHxD.dtype)
    layout = self.options.mask_layout if mask_BxL is not None and B > 1 else "per_example"
    out_BxLxHxD = _mra(q_BxLxHxD, k_BxLxHxD, v_BxLxHxD, mask_BxL, layout, self.mra_kwargs)
    return out_BxLxHxD.reshape(B, L, H * D)


# Compiled as one program, so that a model called outside `jit` compiles its attention once
# per shape instead of op by op (and every layer shares it); inside `jit` it is inlined.
@functools.partial(jax.jit, static_argnums=(4, 5))
def _mra(q_BxLxHxD, k_BxLxHxD, v_BxLxHxD, mask_BxL, mask_layout: str, mra_kwargs: tuple):
  """`mra_attention` with transformers' mask layout when asked (see `RuntimeOptions`)."""
  if mask_layout == "per_example":
    return mra_jax.mra_attention(q_BxLxHxD, k_BxLxHxD, v_BxLxHxD, mask_BxL, **dict(mra_kwargs))
  # transformers repeats the [B, L] mask with `repeat(1, H, 1)` and reshapes it to [B * H, L],
  # which cycles through the examples, while its q/k/v rows are ordered (example, head): head
  # h of example b gets the mask of example (b * H + h) % B. Folding the heads into the batch
  # lets each (example, head) row carry its own mask.
  B, L, H, D = q_BxLxHxD.shape
  fold = lambda x: jnp.swapaxes(x, 1, 2).reshape(B * H, L, 1, D)
  rows = jnp.arange(B * H) % B
  out = mra_jax.mra_attention(
    fold(q_BxLxHxD), fold(k_BxLxHxD), fold(v_BxLxHxD), mask_BxL[rows], **dict(mra_kwargs)
  )
  return jnp.swapaxes(out.reshape(B, H, L, D), 1, 2)


class AttentionOutput(nnx.Module):
  """dense -> dropout -> residual -> LayerNorm (transformers' MraSelfOutput / MraOutput)."""

  def __init__(self, init: LayerFactory, fin: int, rngs: nnx.Rngs):
    self.dense = init.linear(fin, init.config.hidden_size, rngs)
    self.LayerNorm = init.layer_norm(rngs)
    self.dropout = init.dropout(rngs)

  def __call__(self, h_BxLxF: jax.Array, residual_BxLxE: jax.Array) -> jax.Array:
    return self.LayerNorm(self.dropout(self.dense(h_BxLxF)) + residual_BxLxE)


class Attention(nnx.Module):
  def __init__(self, init: LayerFactory, options: RuntimeOptions, rngs: nnx.Rngs):
    # `self.self` is transformers' name for the attention core (key `attention.self.query`).
    self.self = SelfAttention(init, options, rngs)
    self.output = AttentionOutput(init, init.config.hidden_size, rngs)

  def __call__(self, x_BxLxE, mask_BxL):
    return self.output(self.self(x_BxLxE, mask_BxL), x_BxLxE)


class Intermediate(nnx.Module):
  def __init__(self, init: LayerFactory, rngs: nnx.Rngs):
    cfg = init.config
    self.dense = init.linear(cfg.hidden_size, cfg.intermediate_size, rngs)
    self.hidden_act = cfg.hidden_act

  def __call__(self, x_BxLxE):
    return activation(self.hidden_act)(self.dense(x_BxLxE))


class Layer(nnx.Module):
  def __init__(self, init: LayerFactory, options: RuntimeOptions, rngs: nnx.Rngs):
    self.attention = Attention(init, options, rngs)
    self.intermediate = Intermediate(init, rngs)
    self.output = AttentionOutput(init, init.config.intermediate_size, rngs)

  def __call__(self, x_BxLxE, mask_BxL):
    h = self.attention(x_BxLxE, mask_BxL)
    return self.output(self.intermediate(h), h)


class Encoder(nnx.Module):
  def __init__(self, init: LayerFactory, options: RuntimeOptions, rngs: nnx.Rngs):
    n = init.config.num_hidden_layers
    self.layer = nnx.List([Layer(init, options, rngs) for _ in range(n)])

  def __call__(self, x_BxLxE, mask_BxL, output_hidden_states: bool):
    hidden = [x_BxLxE]
    for layer in self.layer:
      hidden.append(layer(hidden[-1], mask_BxL))
    return hidden[-1], (tuple(hidden) if output_hidden_states else None)


class MraModel(nnx.Module):
  """transformers' MraModel: embeddings and the MRA encoder.

  Args:
    config: the architecture (`MraModelConfig`, e.g. from config.json).
    rngs: parameter initialisation and the dropout stream.
    dtype: compute dtype (None: the parameters'); bfloat16 runs the whole model in bfloat16
      (LayerNorm and the attention's softmax statistics stay float32 inside).
    param_dtype: parameter storage dtype (default float32).
    options: `RuntimeOptions` (the budget rule, attention implementation, mask layout).

  Dropout is active until `model.eval()`; `from_pretrained` returns models in eval mode.
  """

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
    self.options = options or RuntimeOptions()
    init = LayerFactory(config, dtype, param_dtype)
    self.embeddings = Embeddings(init, rngs)
    self.encoder = Encoder(init, self.options, rngs)

  def __call__(
    self,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    token_type_ids: jax.Array | None = None,
    position_ids: jax.Array | None = None,
    *,
    output_hidden_states: bool = False,
  ) -> BaseModelOutput:
    """Encodes token ids.

    Args:
      input_ids: int [B, L], any L up to max_position_embeddings (not only multiples of 32).
      attention_mask: optional [B, L], 1 (or True) = real token, 0 = padding.
      token_type_ids: optional int [B, L] (default 0).
      position_ids: optional int [B, L] or [1, L] (default `arange(L) + 2`, as transformers).
      output_hidden_states: also return the embeddings and every layer's output.

    Returns:
      `BaseModelOutput`: last_hidden_state [B, L, hidden_size] in the compute dtype, and
      hidden_states (num_hidden_layers + 1 arrays) when asked.
    """
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be [batch, length]; got input_ids.shape={input_ids.shape}")
    mask_BxL = None
    if attention_mask is not None:
      if attention_mask.shape != input_ids.shape:
        raise ValueError(
          f"attention_mask must have input_ids' shape {input_ids.shape}; got "
          f"attention_mask.shape={attention_mask.shape}"
        )
      mask_BxL = attention_mask.astype(bool)
    x = self.embeddings(input_ids, token_type_ids, position_ids)
    last, hidden = self.encoder(x, mask_BxL, output_hidden_states)
    return BaseModelOutput(last_hidden_state=last, hidden_states=hidden)
