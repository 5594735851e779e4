"""Shared pieces of the per-task LRA configs: every key once, the protocols, the `:arg` parser.

Every key the trainer reads is declared once, with its default and a comment, in the table
of `make_config`; `lock_config=True` then rejects a typo on the command line. A task file
(`configs/listops.py`, ...) supplies its numbers as two dicts of overrides keyed by the
dotted names of that table (`"model.num_layers"`), one per protocol: the MRA paper's
small-model protocol and the original LRA one. Keys marked `_required` have no sensible
default across tasks; every protocol of every task sets them.

Config argument (after the colon): comma-separated, e.g. `configs/listops.py:smoke`,
`:protocol=lra`, `:attention=softmax,smoke`. Unknown keys raise.
"""

from typing import Any

import ml_collections
from ml_collections import config_dict

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


def _required(kind: type):
  """A typed empty field that every protocol must fill (checked by `make_config`)."""
  return config_dict.placeholder(kind)


def attention_kwargs(task_overrides: dict[str, dict[str, Any]]) -> ml_collections.ConfigDict:
  """One sub-dict of knobs per registered attention: registry defaults + this task's.

  All attentions are present so that `--config.attention=X --config.attention_kwargs.X.k=v`
  works for any X; a run records and compares only the block of the attention it uses.
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
  mra: dict[str, Any],
  lra: dict[str, Any],
  attention_overrides: dict[str, dict[str, Any]],
  smoke_overrides: dict[str, Any] | None = None,
  cpu_overrides: dict[str, Any] | None = None,
) -> ml_collections.ConfigDict:
  """Builds the full, commented config of `task` for the parsed `arg`.

  Args:
    task: the task name (`lra.data.tasks.TASKS`).
    arg: the text after the colon of `--config=configs/<task>.py:<arg>`.
    mra, lra: overrides of the table below under each protocol, by dotted key.
    attention_overrides: {attention name: {knob: value}} of this task.
    smoke_overrides, cpu_overrides: the `:smoke` and `:cpu` variants (None: no variant).
  """
  args = parse_arg(arg)
  c = ml_collections.ConfigDict()
  # fmt: off
  c.task = task                          # LRA task name (lra.data.tasks.TASKS).
  c.protocol = args.protocol             # "mra" (MRA paper) or "lra" (original LRA).
  c.attention = args.attention           # Registry name (mra_jax.attentions.names()).
  c.attention_kwargs = attention_kwargs(attention_overrides)  # Knobs per attention name.
  c.seed = 0                             # Seeds init, dropout and data order.
  c.data_dir = "~/lra_data"              # Prepared data; "" = <workdir>/data.
  c.generate_data = False                # Generate missing data (generated tasks only).
  c.generate_sizes = (96_000, 2_000, 2_000)  # Train/val/test sizes when generating.
  c.generate_max_tokens = 0              # ListOps only: >0 generates shorter expressions.
  c.max_length = _required(int)          # Tokens per example (per document for retrieval).
  c.batch_size = _required(int)          # Global batch (all devices and hosts together).
  c.eval_batch_size = _required(int)     # Global batch for validation and test (default:
                                         # batch_size).
  c.grad_accum_steps = 1                 # Micro-batches per step (batch_size divides).
  c.num_train_steps = _required(int)     # Optimizer steps.
  c.eval_every_steps = _required(int)    # Validation (and best-checkpoint) period.
  c.num_eval_batches = _required(int)    # Validation batches per eval; -1 = whole split.
  c.checkpoint_every_steps = 500         # Resumable checkpoint period (also at the end).
  c.log_every_steps = 10                 # Train metrics period (averaged over the window).
  c.learning_rate = _required(float)     # Peak LR (one_cycle) or constant factor (rsqrt).
  c.compute_dtype = "float32"            # "float32" or "bfloat16" activations.
  c.legacy_pixel_padding = False         # Pixel tasks: mask = pixel != 0, as old harnesses.
  c.token_order = "auto"                 # "auto" | "row_major" | "patch" (4x8 tiles, images).
  c.check_memory = True                  # Warn before training if activations may not fit.
  c.plot = True                          # Write learning_curve.png at the end.
  c.data_workers = -1                    # Input processes; -1 = from the core count (0 on
                                         # < 4 cores). Any count gives the same batches.

  # lra.models.ModelConfig(**c.model, <task and run fields>): the same keys.
  c.model = ml_collections.ConfigDict()
  c.model.num_layers = 2                 # Encoder blocks.
  c.model.embed_dim = 64                 # Residual width.
  c.model.qkv_dim = 64                   # Total query/key/value width (heads x head dim).
  c.model.num_heads = 2                  # Attention heads.
  c.model.mlp_dim = 128                  # Feed-forward hidden width (GELU).
  c.model.classifier_hidden = (128,)     # Head hidden widths (ReLU).
  c.model.dropout_rate = 0.1             # Embedding, residual and FFN dropout.
  c.model.pooling = "mean"               # "mean" (masked, / length) or "cls".
  c.model.positions = "learned"          # "learned" or "sinusoidal" position embeddings.
  c.model.embed_init_std = 0.02          # Token-embedding init stddev.
  c.model.qkv_bias = True                # Bias in the q/k/v/out projections.
  c.model.retrieval_interaction = "nli"  # Two-tower head input: "nli" = [u, v, u*v, u-v],
                                         # "concat" = [u, v].

  # lra.optim.OptimizerConfig(**c.optimizer, <learning rate and steps>): the same keys.
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.schedule = _required(str)  # "one_cycle" | "rsqrt" | "cosine".
  c.optimizer.warmup_steps = _required(int)  # Linear warmup steps.
  c.optimizer.weight_decay = 0.0         # Decoupled (AdamW) weight decay.
  c.optimizer.b1 = 0.9                   # Adam beta1 (unless cycle_momentum).
  c.optimizer.b2 = 0.999                 # Adam beta2.
  c.optimizer.eps = 1e-6                 # Adam epsilon.
  c.optimizer.cycle_momentum = True      # one_cycle only: beta1 0.95 -> 0.85 -> 0.95.
  c.optimizer.grad_clip_norm = 0.0       # Global-norm clipping; 0 = off.
  # fmt: on

  _apply(c, mra if args.protocol == "mra" else lra, task, f"protocol={args.protocol}")
  if c.eval_batch_size is None:
    c.eval_batch_size = c.batch_size
  missing = [key for key, value in _leaves(c) if value is None]
  if missing:
    raise ValueError(f"{task} protocol={args.protocol} leaves {missing} unset")
  if args.cpu:
    _apply(c, _variant(cpu_overrides, task, "cpu"), task, "cpu")
  if args.smoke:
    _apply(c, _variant(smoke_overrides, task, "smoke"), task, "smoke")
  return c


def _leaves(node: ml_collections.ConfigDict, prefix: str = ""):
  for key, value in node.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def _variant(overrides: dict[str, Any] | None, task: str, what: str) -> dict[str, Any]:
  if not overrides:
    raise ValueError(f"{task} has no {what!r} variant; drop :{what} from --config")
  return overrides


def _apply(c: ml_collections.ConfigDict, overrides: dict[str, Any], task: str, what: str):
  """Sets `overrides` ({dotted key: value}) on `c`; a key the table lacks raises."""
  for dotted, value in overrides.items():
    node = c
    *parents, leaf = dotted.split(".")
    for parent in parents:
      node = node[parent]
    if leaf not in node:
      raise KeyError(f"{task} {what} override names an undeclared key {dotted!r}")
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


# The original LRA protocol's AdamW (0.9, 0.98, 1e-9); its schedules are factor products
# without beta1 cycling.
LRA_OPTIMIZER = {
  "optimizer.b2": 0.98,
  "optimizer.eps": 1e-9,
  "optimizer.cycle_momentum": False,
}
