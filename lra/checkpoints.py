"""Orbax checkpoints of a run, and the config stamp that ties a workdir to one config.

Layout of a workdir:
  config.json          the config that made it (`RunConfig.record`); another one is refused
  checkpoints/<step>/  resumable state: parameters, optimizer state, and `meta` (JSON: data
                       loader position, best dev accuracy so far, train-metric window)
  best/<step>/         parameters of the best validation accuracy so far
"""

import json
import os

import jax
import orbax.checkpoint as ocp

from lra import run_config

CONFIG_FILE = "config.json"


class ConfigMismatchError(ValueError):
  """The workdir was made by a different config."""


def _chosen_knobs_only(record: dict) -> dict:
  """A stored config record with the chosen attention's knobs only (records of older runs
  held a knob block per registered attention)."""
  knobs = record.get("attention_kwargs", {})
  if record.get("attention") in knobs and isinstance(knobs[record["attention"]], dict):
    record = {**record, "attention_kwargs": knobs[record["attention"]]}
  return record


def _comparable(record: dict) -> dict:
  """A config record without the keys that may change on resume."""
  record = _chosen_knobs_only(record)
  return {k: v for k, v in record.items() if k not in run_config.RUN_ONLY_KEYS}


_ABSENT = "<absent>"


def _diff(old, new, defaults, prefix=""):
  """The differing keys; a key the stored record lacks matches its declared default (it was
  added to the code after the workdir was made, and the older code computed that)."""
  if isinstance(old, dict) and isinstance(new, dict):
    defaults = defaults if isinstance(defaults, dict) else {}
    for key in sorted(set(old) | set(new)):
      stored = old.get(key, _ABSENT)
      if stored == _ABSENT and key in defaults and new.get(key, _ABSENT) == defaults[key]:
        continue
      yield from _diff(stored, new.get(key, _ABSENT), defaults.get(key), f"{prefix}{key}.")
  elif old != new:
    yield f"{prefix[:-1]}: stored {old!r}, now {new!r}"


def check_config(workdir: str, run: run_config.RunConfig) -> None:
  """Refuses `run` when `workdir` holds the stamp of another config (writes nothing).

  Raises:
    ConfigMismatchError: listing every differing key.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    stored = _comparable(json.load(f))
  differences = list(
    _diff(stored, _comparable(run.record()), run_config.declared_defaults(run.attention))
  )
  if differences:
    raise ConfigMismatchError(
      f"workdir={workdir!r} was made by a different config ({path}), so it cannot be "
      f"resumed with this one. Differences: "
      + "; ".join(differences)
      + ". Use a new --workdir, or rerun with the stored config."
    )


def store_config(workdir: str, run: run_config.RunConfig) -> None:
  """Writes the stamp of `run` into `workdir` unless it holds one (`check_config` first)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    return
  os.makedirs(workdir, exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(run.record(), f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def load_config(workdir: str) -> run_config.RunConfig:
  """The config a run stored in `workdir` (what `lra.main` wrote on its first start).

  Raises:
    FileNotFoundError: `workdir` holds no config.json (not a run directory).
  """
  path = os.path.join(os.path.expanduser(workdir), CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"workdir={workdir!r} holds no {CONFIG_FILE}: it is not a directory written by "
      "`python -m lra.main`"
    )
  with open(path) as f:
    return run_config.from_config_dict(_chosen_knobs_only(json.load(f)))


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
  """The resumable checkpoints and the best-validation parameters of one workdir."""

  def __init__(self, workdir: str, keep: int = 2):
    options = lambda n: ocp.CheckpointManagerOptions(
      max_to_keep=n, create=True, enable_async_checkpointing=False
    )
    self._latest = ocp.CheckpointManager(
      os.path.join(workdir, "checkpoints"), options=options(keep), item_names=("state", "meta")
    )
    self._best = ocp.CheckpointManager(
      os.path.join(workdir, "best"), options=options(1), item_names=("params", "meta")
    )

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def save(self, step: int, state, meta: dict) -> None:
    if step in self._latest.all_steps():
      return
    self._latest.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )
    self._latest.wait_until_finished()

  def restore_latest(self, state_like) -> tuple[int, object, dict] | None:
    """(step, state, meta) of the newest checkpoint, shaped and sharded like `state_like`."""
    step = self._latest.latest_step()
    if step is None:
      return None
    out = self._latest.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state_like)), meta=ocp.args.JsonRestore()
      ),
    )
    return step, out.state, out.meta

  def save_best(self, step: int, params, meta: dict) -> None:
    for old in self._best.all_steps():
      if old >= step:
        self._best.delete(old)
    self._best.save(
      step,
      args=ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)),
    )
    self._best.wait_until_finished()

  def drop_best_after(self, step: int) -> None:
    """Forgets best checkpoints newer than `step` (a resumed run makes them again)."""
    for old in self._best.all_steps():
      if old > step:
        self._best.delete(old)

  def restore_best(self, params_like) -> tuple[object, dict] | None:
    step = self._best.latest_step()
    if step is None:
      return None
    out = self._best.restore(
      step,
      args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(params_like)), meta=ocp.args.JsonRestore()
      ),
    )
    return out.params, out.meta

  def close(self) -> None:
    self._latest.close()
    self._best.close()
