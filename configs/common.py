"""Shared pieces of the per-task configs: the protocols, the variants, the `:arg` parser.

Every key a run reads is declared once, with its default and meaning, by `lra.run_config`
(`RunConfig`, `lra.models.ModelConfig`, `lra.optim.OptimizerConfig` and the chosen
attention's knobs dataclass); `make_config` starts from that and applies a task's numbers.
A task file (`configs/listops.py`, ...) supplies them as dicts of overrides keyed by dotted
names (`"model.num_layers"`), one per protocol (the MRA paper's small-model protocol and the
original LRA one), plus its attention knobs and its variants. `lock_config=True` then
rejects a typo on the command line.

Config argument (after the colon): comma-separated, e.g. `configs/listops.py:smoke`,
`:protocol=lra`, `:attention=softmax,smoke`. `attention=NAME` picks the attention, and the
config then holds that attention's knobs only (`attention_kwargs`). Unknown keys raise.
"""

from typing import Any

import ml_collections

from lra import run_config
from lra.data import tasks
from mra_jax import knobs

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
      raise ValueError(knobs.unknown_message("config argument", [key], defaults) + f" (in :{arg})")
    kind = type(defaults[key])
    if kind is bool:
      if eq and value not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key} takes true/false; got {key}={value!r}")
      out[key] = not eq or value in ("true", "1")
    else:
      if not eq:
        raise ValueError(f"config argument {key} needs a value, e.g. {key}=...; got :{arg}")
      out[key] = kind(value)
  return ml_collections.ConfigDict(out)


def make_config(
  task: str,
  arg: str | None,
  *,
  mra: dict[str, Any],
  lra: dict[str, Any] | None,
  attention_overrides: dict[str, dict[str, Any]],
  smoke_overrides: dict[str, Any] | None = None,
  cpu_overrides: dict[str, Any] | None = None,
  protocols: tuple[str, ...] = PROTOCOLS,
) -> ml_collections.ConfigDict:
  """Builds the config of `task` for the parsed `arg`.

  Args:
    task: the task name (`lra.data.tasks.TASKS`).
    arg: the text after the colon of `--config=configs/<task>.py:<arg>`.
    mra, lra: overrides of `lra.run_config`'s keys under each protocol, by dotted key
      (a task with one protocol passes it as `mra` and None as `lra`).
    attention_overrides: {attention name: {knob: value}} of this task (the chosen
      attention's entry applies).
    smoke_overrides, cpu_overrides: the `:smoke` and `:cpu` variants (None: no variant).
      Their "attention_kwargs" entry, if any, is {attention name: {knob: value}}.
    protocols: the protocol names the task has, in the order of `mra`, `lra`; the first
      is the default.

  Raises:
    ValueError: an unknown argument, attention or protocol, or a variant the task lacks.
  """
  args = parse_arg(arg, protocol=protocols[0])
  if args.protocol not in protocols:
    raise ValueError(f"protocol must be one of {protocols}; got protocol={args.protocol!r}")
  c = run_config.config_dict(task=task, attention=args.attention)
  c.protocol = args.protocol
  _apply(c, mra if args.protocol == protocols[0] else lra, task, f"protocol={args.protocol}")
  _apply(c, {"attention_kwargs": attention_overrides}, task, "attention settings")
  missing = run_config.unset_keys(c)
  if missing:
    raise ValueError(f"{task} protocol={args.protocol} leaves {missing} unset")
  if args.cpu:
    _apply(c, _variant(cpu_overrides, task, "cpu"), task, "cpu")
  if args.smoke:
    chance = 1 / tasks.get_task(task).num_classes
    c.expected_result = (
      f"near chance ({chance:.0%}) at smoke scale: a few steps on tiny data check that "
      "every stage runs, not that the model learns"
    )  # A variant's own `expected_result` replaces this.
    _apply(c, _variant(smoke_overrides, task, "smoke"), task, "smoke")
  return c


def _variant(overrides: dict[str, Any] | None, task: str, what: str) -> dict[str, Any]:
  if not overrides:
    raise ValueError(f"{task} has no {what!r} variant; drop :{what} from --config")
  return overrides


def _apply(c: ml_collections.ConfigDict, overrides: dict[str, Any], task: str, what: str):
  """Sets `overrides` ({dotted key: value}) on `c`; a key the config lacks raises.

  The "attention_kwargs" entry maps attention names to knob values; only the chosen
  attention's apply (the config holds no other attention's knobs).
  """
  for dotted, value in overrides.items():
    if dotted == "attention_kwargs":
      for knob, knob_value in value.get(c.attention, {}).items():
        if knob not in c.attention_kwargs:
          raise KeyError(f"{task} {what} set unknown knob {knob!r} of {c.attention!r}")
        c.attention_kwargs[knob] = knob_value
      continue
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
