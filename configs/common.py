"""Shared pieces of the per-task LRA configs: every key, both protocols, the `:arg` parser.

A task file (`configs/listops.py`, ...) supplies its numbers as two `Protocol` records (the
MRA paper's small-model protocol and the original LRA one) and calls `make_config`. Every key
the trainer reads is declared here, so `lock_config=True` rejects a typo on the command line.

Config argument (after the colon): comma-separated, e.g. `configs/listops.py:smoke`,
`:protocol=lra`, `:attention=softmax,smoke`. Unknown keys raise.
"""

import dataclasses
from typing import Any

import ml_collections

from mra_jax import attentions

# Arguments accepted after the colon, with their types and defaults.
ARG_DEFAULTS = {"smoke": False, "cpu": False, "protocol": "mra", "attention": "mra2"}
PROTOCOLS = ("mra", "lra")


def parse_arg(arg: str | None, **extra_defaults) -> ml_collections.ConfigDict:
  """Parses `key=value,flag` into a ConfigDict typed by the defaults; unknown keys raise."""
  defaults = {**ARG_DEFAULTS, **extra_defaults}
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key=} in {arg=}; known: {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      if eq and value not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key} takes true/false; got {value=}")
      out[key] = not eq or value in ("true", "1")
    else:
      if not eq:
        raise ValueError(f"config argument {key} needs a value, e.g. {key}=...; got {arg=}")
      out[key] = kind(value)
  if out["protocol"] not in PROTOCOLS:
    raise ValueError(f"protocol must be one of {PROTOCOLS}; got protocol={out['protocol']!r}")
  return ml_collections.ConfigDict(out)


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One task's numbers under one protocol (lra.md §3.1 / §3.2, mra.md §7)."""

  # fmt: off
  max_length: int
  batch_size: int
  learning_rate: float
  warmup_steps: int
  num_train_steps: int
  eval_every_steps: int
  num_eval_batches: int        # -1: the whole validation split
  schedule: str                # "one_cycle" | "rsqrt" | "cosine"
  num_layers: int = 2
  embed_dim: int = 64
  qkv_dim: int = 64
  num_heads: int = 2
  mlp_dim: int = 128
  classifier_hidden: tuple[int, ...] = (128,)
  dropout_rate: float = 0.1
  pooling: str = "mean"        # "mean" | "cls"
  positions: str = "learned"   # "learned" | "sinusoidal"
  embed_init_std: float = 0.02
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-6
  cycle_momentum: bool = True
  grad_clip_norm: float = 0.0
  retrieval_interaction: str = "nli"  # "nli": [u, v, u*v, u-v]; "concat": [u, v]
  # fmt: on


def attention_kwargs(task_overrides: dict[str, dict[str, Any]]) -> ml_collections.ConfigDict:
  """One sub-dict of knobs per registered attention: registry defaults + this task's.

  Knobs whose default is None are left out (their type is unknown to the flag parser, so
  they could not be overridden anyway); the registry's own default then applies.
  """
  out = {}
  for name in attentions.names():
    defaults = attentions.knob_defaults(name)
    unknown = set(task_overrides.get(name, {})) - set(defaults)
    if unknown:
      raise KeyError(
        f"task settings for attention {name!r} name unknown knobs "
        f"{sorted(unknown)}; known: {sorted(defaults)}"
      )
    knobs = {k: v for k, v in {**defaults, **task_overrides.get(name, {})}.items() if v is not None}
    out[name] = ml_collections.ConfigDict(knobs)
  return ml_collections.ConfigDict(out)


def make_config(
  task: str,
  arg: str | None,
  *,
  mra: Protocol,
  lra: Protocol,
  attention_overrides: dict[str, dict[str, Any]],
  smoke_overrides: dict[str, Any] | None = None,
  cpu_overrides: dict[str, Any] | None = None,
) -> ml_collections.ConfigDict:
  """Builds the full, commented config of `task` for the parsed `arg`."""
  args = parse_arg(arg)
  p = mra if args.protocol == "mra" else lra
  c = ml_collections.ConfigDict()
  # fmt: off
  c.task = task                          # LRA task name (lra.data.tasks.TASKS).
  c.protocol = args.protocol             # "mra" (MRA paper, mlpen) or "lra" (original LRA).
  c.attention = args.attention           # Registry name (mra_jax.attentions.names()).
  c.attention_kwargs = attention_kwargs(attention_overrides)  # Knobs per attention name.
  c.seed = 0                             # Seeds init, dropout and data order.
  c.data_dir = "~/lra_data"              # Prepared data; "" = <workdir>/data.
  c.generate_data = False                # Generate missing data (generated tasks only).
  c.generate_sizes = (96_000, 2_000, 2_000)  # Train/val/test sizes when generating.
  c.generate_max_tokens = 0              # ListOps only: >0 generates shorter expressions.
  c.max_length = p.max_length            # Tokens per example (per document for retrieval).
  c.batch_size = p.batch_size            # Global batch (all devices and hosts together).
  c.eval_batch_size = p.batch_size       # Global batch for validation and test.
  c.grad_accum_steps = 1                 # Micro-batches per step (batch_size divides).
  c.num_train_steps = p.num_train_steps  # Optimizer steps.
  c.eval_every_steps = p.eval_every_steps  # Validation (and best-checkpoint) period.
  c.num_eval_batches = p.num_eval_batches  # Validation batches per eval; -1 = whole split.
  c.checkpoint_every_steps = 500         # Resumable checkpoint period (also at the end).
  c.log_every_steps = 10                 # Train metrics period (averaged over the window).
  c.learning_rate = p.learning_rate      # Peak LR (one_cycle) or constant factor (rsqrt).
  c.compute_dtype = "float32"            # "float32" or "bfloat16" activations.
  c.legacy_pixel_padding = False         # Pixel tasks: mask = pixel != 0, as old harnesses.
  c.token_order = "auto"                 # "auto" | "row_major" | "patch" (4x8 tiles, images).
  c.check_memory = True                  # Warn before training if activations may not fit.
  c.plot = True                          # Write learning_curve.png at the end.

  c.model = ml_collections.ConfigDict()
  c.model.num_layers = p.num_layers      # Encoder blocks.
  c.model.embed_dim = p.embed_dim        # Residual width.
  c.model.qkv_dim = p.qkv_dim            # Total query/key/value width (heads x head dim).
  c.model.num_heads = p.num_heads        # Attention heads.
  c.model.mlp_dim = p.mlp_dim            # Feed-forward hidden width (GELU).
  c.model.classifier_hidden = p.classifier_hidden  # Head hidden widths (ReLU).
  c.model.dropout_rate = p.dropout_rate  # Embedding, residual and FFN dropout.
  c.model.pooling = p.pooling            # "mean" (masked, / length) or "cls".
  c.model.positions = p.positions        # "learned" or "sinusoidal" position embeddings.
  c.model.embed_init_std = p.embed_init_std  # Token-embedding init stddev.
  c.model.qkv_bias = True                # Bias in the q/k/v/out projections.
  c.model.retrieval_interaction = p.retrieval_interaction  # Two-tower head input.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.schedule = p.schedule      # "one_cycle" | "rsqrt" | "cosine".
  c.optimizer.warmup_steps = p.warmup_steps  # Linear warmup steps.
  c.optimizer.weight_decay = p.weight_decay  # Decoupled (AdamW) weight decay.
  c.optimizer.b1 = p.b1                  # Adam beta1 (one_cycle cycles it 0.95<->0.85).
  c.optimizer.b2 = p.b2                  # Adam beta2.
  c.optimizer.eps = p.eps                # Adam epsilon.
  c.optimizer.cycle_momentum = p.cycle_momentum and p.schedule == "one_cycle"  # As PyTorch.
  c.optimizer.grad_clip_norm = p.grad_clip_norm  # Global-norm clipping; 0 = off.
  # fmt: on

  if args.cpu:
    _apply(c, cpu_overrides or {}, task, "cpu")
  if args.smoke:
    _apply(c, smoke_overrides or {}, task, "smoke")
  return c


def _apply(c: ml_collections.ConfigDict, overrides: dict[str, Any], task: str, what: str):
  if not overrides:
    raise ValueError(f"{task} has no {what!r} variant; drop :{what} from --config")
  for dotted, value in overrides.items():
    node = c
    *parents, leaf = dotted.split(".")
    for parent in parents:
      node = node[parent]
    if leaf not in node:
      raise KeyError(f"{what} override names an undeclared key {dotted!r}")
    node[leaf] = value


def smoke(**extra) -> dict[str, Any]:
  """A tiny CPU run: minutes, every code path (train, eval, checkpoint, test)."""
  return {
    "num_train_steps": 40,
    "eval_every_steps": 20,
    "checkpoint_every_steps": 20,
    "log_every_steps": 5,
    "num_eval_batches": -1,
    "batch_size": 16,
    "eval_batch_size": 16,
    "optimizer.warmup_steps": 8,
    "learning_rate": 1e-3,
    "token_order": "row_major",
    **extra,
  }
