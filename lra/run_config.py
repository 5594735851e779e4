"""A run's settings: every key declared once (`RunConfig`), typed once (`from_config_dict`).

`RunConfig` and the two blocks it holds (`lra.models.ModelConfig` as `model`,
`lra.optim.OptimizerConfig` as `optimizer`) declare each key of a run with its default and
its meaning (their `Attributes:` docstrings). Everything else is derived from them:

* `config_dict(attention)` is the ml_collections `ConfigDict` a `configs/<task>.py` file
  starts from and the command line overrides (`--config.KEY=VALUE`, typos refused by
  `lock_config`). It holds the chosen attention's knobs only (`attention_kwargs`, from the
  registry's knobs dataclass), so every knob, None defaults included, can be set.
* `from_config_dict(c)` turns such a ConfigDict (or a stored record of one) into a frozen,
  validated `RunConfig`: the task looked up once, the knobs, model and optimizer typed.
  Only this object reaches the trainer.
* `describe(c)` lists the keys, values and meanings for `--help`.

Keys that change how a run goes but never what it computes (`RUN_ONLY_KEYS`) may differ when
a run resumes.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

import ml_collections
from ml_collections import config_dict as config_dict_lib

from lra import models, optim
from lra.data import tasks
from mra_jax import attentions, knobs

# Keys that change how a run goes, never what it computes: a different value resumes.
RUN_ONLY_KEYS = ("data_workers", "plot", "check_memory", "expected_result")
PROTOCOLS = ("mra", "lra", "lm")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
  """One run of the harness, validated on construction.

  Attributes:
    task: the task name (`lra.data.tasks.TASKS`).
    protocol: "mra" (the MRA paper's), "lra" (the original LRA release's) or "lm" (language
      modelling).
    attention: the attention's registry name (`mra_jax.attentions.names()`); pick it with
      the config argument, `--config=configs/<task>.py:attention=NAME`.
    attention_kwargs: the chosen attention's knobs (its registry knobs dataclass).
    seed: seeds initialisation, dropout and the data order.
    data_dir: prepared data; "" means <workdir>/data.
    generate_data: generate missing data (generated tasks only).
    generate_sizes: (train, validation, test) examples when generating (lm: bytes of each
      split); -1: the task's default size (generated tasks) or the whole split (lm).
    generate_max_tokens: ListOps only: > 0 generates shorter expressions.
    max_length: tokens per example (per document for retrieval; lm: the window, bytes).
    batch_size: global batch (all devices and hosts together).
    eval_batch_size: global batch for validation and test; None: batch_size.
    grad_accum_steps: micro-batches per step (they divide batch_size).
    num_train_steps: optimizer steps.
    eval_every_steps: validation (and best-checkpoint) period.
    num_eval_batches: validation batches per evaluation; -1: the whole split.
    checkpoint_every_steps: resumable checkpoint period (also at the end, and when stopped
      by SIGTERM or SIGINT).
    log_every_steps: train-metric period (averaged over the window).
    learning_rate: peak learning rate (one_cycle) or constant factor (rsqrt, cosine).
    compute_dtype: "float32" or "bfloat16" activations.
    legacy_pixel_padding: pixel tasks: mask = pixel != 0, as the old harnesses.
    token_order: "auto", "row_major" or "patch" (4x8 tiles of an image, for MRA).
    check_memory: warn before training if activations may not fit.
    plot: write learning_curve.png at the end.
    data_workers: input processes; -1: from the core count (0 below 4 cores). Any count
      gives the same batches.
    expected_result: what this config is expected to reach, printed with the result.
    eval_lengths: lm only: further model lengths at which the best checkpoint's test bits
      per byte are measured at the end (their windows are prepared as needed).
    model: the model's hyperparameters (`lra.models.ModelConfig`).
    optimizer: the optimizer's hyperparameters (`lra.optim.OptimizerConfig`).
  """

  task: str
  protocol: str = "mra"
  attention: str = "mra2"
  attention_kwargs: Any = dataclasses.field(default=None, metadata={"block": True})
  seed: int = 0
  data_dir: str = "~/lra_data"
  generate_data: bool = False
  generate_sizes: tuple[int, int, int] = (96_000, 2_000, 2_000)
  generate_max_tokens: int = 0
  max_length: int
  batch_size: int
  eval_batch_size: int | None = None
  grad_accum_steps: int = 1
  num_train_steps: int
  eval_every_steps: int
  num_eval_batches: int
  checkpoint_every_steps: int = 500
  log_every_steps: int = 10
  learning_rate: float
  compute_dtype: str = "float32"
  legacy_pixel_padding: bool = False
  token_order: str = "auto"
  check_memory: bool = True
  plot: bool = True
  data_workers: int = -1
  expected_result: str = ""
  eval_lengths: tuple[int, ...] = ()
  model: models.ModelConfig = dataclasses.field(default=None, metadata={"block": True})
  optimizer: optim.OptimizerConfig = dataclasses.field(default=None, metadata={"block": True})
  # The task object, looked up once (from `task`); not a config key.
  task_spec: tasks.Task = dataclasses.field(default=None, repr=False, metadata={"derived": True})

  def __post_init__(self):
    set_ = lambda name, value: object.__setattr__(self, name, value)
    if self.task_spec is None:
      set_("task_spec", tasks.get_task(self.task).for_length(self.max_length))
    set_("generate_sizes", tuple(self.generate_sizes))
    set_("eval_lengths", tuple(self.eval_lengths))
    if self.eval_batch_size is None:
      set_("eval_batch_size", self.batch_size)
    for name in (
      "max_length",
      "batch_size",
      "eval_batch_size",
      "grad_accum_steps",
      "num_train_steps",
      "eval_every_steps",
      "checkpoint_every_steps",
      "log_every_steps",
    ):
      _check_int(name, getattr(self, name), minimum=1)
    _check_int("seed", self.seed, minimum=0)
    _check_int("generate_max_tokens", self.generate_max_tokens, minimum=0)
    if self.num_eval_batches != -1:
      _check_int("num_eval_batches", self.num_eval_batches, minimum=1)
    if self.data_workers != -1:
      _check_int("data_workers", self.data_workers, minimum=0)
    if len(self.generate_sizes) != 3 or not all(
      isinstance(n, int) and not isinstance(n, bool) and (n >= 1 or n == -1)
      for n in self.generate_sizes
    ):
      raise ValueError(
        "generate_sizes must be (train, validation, test) positive ints or -1; got "
        f"generate_sizes={self.generate_sizes!r}"
      )
    if not all(
      isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in self.eval_lengths
    ):
      raise ValueError(f"eval_lengths must hold ints >= 1; got eval_lengths={self.eval_lengths!r}")
    if self.eval_lengths and self.task_spec.objective != "next_token":
      raise ValueError(
        f"eval_lengths applies to the language-model task; got eval_lengths="
        f"{self.eval_lengths!r} for task={self.task!r}"
      )
    if self.batch_size % self.grad_accum_steps:
      raise ValueError(
        "grad_accum_steps must divide batch_size; got "
        f"batch_size={self.batch_size}, grad_accum_steps={self.grad_accum_steps}"
      )
    for name, allowed in (("protocol", PROTOCOLS), ("compute_dtype", DTYPES)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name} must be one of {allowed}; got {name}={getattr(self, name)!r}")

  def record(self) -> dict:
    """The config as JSON types, in the shape of the ConfigDict it came from."""
    out = {}
    for field in dataclasses.fields(self):
      if field.metadata.get("derived"):
        continue
      value = getattr(self, field.name)
      if field.name == "attention_kwargs":
        fixed = attentions.fixed_knobs(self.attention)
        value = {k: v for k, v in dataclasses.asdict(value).items() if k not in fixed}
      elif field.metadata.get("block"):
        value = {name: getattr(value, name) for name in block_keys(type(value))}
      out[field.name] = value
    return json.loads(json.dumps(out, default=list))


def declared_defaults(attention: str) -> dict:
  """The declared default of every key that has one, as JSON types, shaped like `record()`
  (a key added after a workdir was made matches that workdir's stamp at its default)."""
  out = {}
  for cls, where in (
    (RunConfig, out),
    (models.ModelConfig, out.setdefault("model", {})),
    (optim.OptimizerConfig, out.setdefault("optimizer", {})),
  ):
    for f in dataclasses.fields(cls):
      if f.default is not dataclasses.MISSING and not f.metadata.get("derived"):
        if f.name in block_keys(cls) and not f.metadata.get("block"):
          where[f.name] = f.default
  fixed = attentions.fixed_knobs(attention)
  out["attention_kwargs"] = {
    k: v for k, v in attentions.knob_defaults(attention).items() if k not in fixed
  }
  return json.loads(json.dumps(out, default=list))


def block_keys(cls: type) -> tuple[str, ...]:
  """The config keys of a block dataclass: its fields but those the run fills in."""
  return tuple(f.name for f in dataclasses.fields(cls) if not f.metadata.get("from_run"))


def _check_int(name: str, value: Any, *, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}; got {name}={value!r}")


def _field_value(field: dataclasses.Field, hint) -> Any:
  """A ConfigDict leaf for a dataclass field: its default, or a typed empty placeholder."""
  if field.default is not dataclasses.MISSING and field.default is not None:
    return field.default
  if typing.get_origin(hint) is not None and type(None) in typing.get_args(hint):
    hint = next(a for a in typing.get_args(hint) if a is not type(None))
  kind = typing.get_origin(hint) or hint
  return config_dict_lib.placeholder(kind if isinstance(kind, type) else object)


def _block(cls: type, only=None) -> ml_collections.ConfigDict:
  hints = typing.get_type_hints(cls)
  fields = [
    f
    for f in dataclasses.fields(cls)
    if f.init
    and not f.metadata.get("derived")
    and not f.metadata.get("block")
    and (only is None or f.name in only)
  ]
  return ml_collections.ConfigDict({f.name: _field_value(f, hints[f.name]) for f in fields})


def knobs_block(attention: str) -> ml_collections.ConfigDict:
  """The chosen attention's knobs as a ConfigDict: defaults, None ones as typed placeholders."""
  types = attentions.knob_types(attention)
  return ml_collections.ConfigDict(
    {
      name: config_dict_lib.placeholder(types[name]) if value is None else value
      for name, value in attentions.knob_defaults(attention).items()
    }
  )


def config_dict(*, task: str, attention: str) -> ml_collections.ConfigDict:
  """Every key of `RunConfig` with its default (required ones empty), for `attention`.

  Raises:
    ValueError: unknown task or attention (with the closest name).
  """
  tasks.get_task(task)
  c = _block(RunConfig)
  c.task = task
  c.attention = attention
  c.attention_kwargs = knobs_block(attention)
  c.model = _block(models.ModelConfig, block_keys(models.ModelConfig))
  c.optimizer = _block(optim.OptimizerConfig, block_keys(optim.OptimizerConfig))
  return c


def unset_keys(c: ml_collections.ConfigDict) -> list[str]:
  """Dotted keys still without a value, among those a run needs."""
  optional = {"eval_batch_size"} | {
    f"attention_kwargs.{k}" for k, v in attentions.knob_defaults(c.attention).items() if v is None
  }
  return [key for key, value in _leaves(c) if value is None and key not in optional]


def _leaves(node, prefix: str = ""):
  for key, value in node.items():
    if isinstance(value, ml_collections.ConfigDict | dict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def from_config_dict(c: ml_collections.ConfigDict | dict) -> RunConfig:
  """The validated `RunConfig` of a ConfigDict (or of a stored record of one).

  Raises:
    ValueError: an unset key, an unknown task or attention, a knob or value refused; the
      message names the key and its value.
  """
  d = c.to_dict() if hasattr(c, "to_dict") else json.loads(json.dumps(c))
  missing = [key for key, value in _leaves(d) if value is None]
  missing = [k for k in missing if k != "eval_batch_size" and not k.startswith("attention_")]
  if missing:
    raise ValueError(f"config keys {missing} are unset; every protocol of the task sets them")
  task = tasks.get_task(d["task"])
  for name, allowed in (("protocol", PROTOCOLS), ("compute_dtype", DTYPES)):
    if d.get(name) not in allowed:
      raise ValueError(f"{name} must be one of {allowed}; got {name}={d.get(name)!r}")
  knobs_values = {k: _tupled(v) for k, v in (d.get("attention_kwargs") or {}).items()}
  run_knobs = attentions.make_knobs(d["attention"], **knobs_values)
  _check_block("model", d["model"], models.ModelConfig)
  _check_block("optimizer", d["optimizer"], optim.OptimizerConfig)
  fields = {k: v for k, v in d.items() if k not in ("model", "optimizer", "attention_kwargs")}
  unknown = set(fields) - set(_top_keys())
  if unknown:
    raise ValueError(knobs.unknown_message("config key", unknown, _top_keys()))
  task = task.for_length(d["max_length"])
  model = models.ModelConfig(
    **d["model"],
    objective=task.objective,
    vocab_size=task.vocab_size,
    num_classes=task.num_classes,
    dual_input=task.dual_input,
    image_shape=task.image_shape,
    max_length=d["max_length"],
    attention=d["attention"],
    attention_knobs=run_knobs,
    token_order=d.get("token_order", "auto"),
    dtype=d.get("compute_dtype", "float32"),
  )
  optimizer = optim.OptimizerConfig(
    **d["optimizer"], learning_rate=d["learning_rate"], total_steps=d["num_train_steps"]
  )
  return RunConfig(
    **fields, attention_kwargs=run_knobs, model=model, optimizer=optimizer, task_spec=task
  )


def _tupled(value):
  return tuple(value) if isinstance(value, list) else value


def _top_keys() -> list[str]:
  return [f.name for f in dataclasses.fields(RunConfig) if not f.metadata.get("derived")]


def _check_block(name: str, values: dict, cls: type) -> None:
  unknown = set(values) - set(block_keys(cls))
  if unknown:
    raise ValueError(knobs.unknown_message(f"key in {name}:", unknown, block_keys(cls)))


def describe(c: ml_collections.ConfigDict) -> list[tuple[str, Any, str]]:
  """(dotted key, value, meaning) of every key of `c`, for `--help`."""
  docs = {f"{k}": v for k, v in knobs.docs(RunConfig).items()}
  docs.update({f"model.{k}": v for k, v in knobs.docs(models.ModelConfig).items()})
  docs.update({f"optimizer.{k}": v for k, v in knobs.docs(optim.OptimizerConfig).items()})
  docs.update({f"attention_kwargs.{k}": v for k, v in attentions.knob_docs(c.attention).items()})
  return [(key, value, docs.get(key, "")) for key, value in _leaves(c)]
