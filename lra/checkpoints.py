"""Orbax checkpoints of a run, and the config stamp that ties a workdir to one config.

Layout of a workdir:
  config.json          the config that made it (`config_record`); another config is refused
  checkpoints/<step>/  resumable state: parameters, optimizer state, and `meta` (JSON: data
                       loader position, best dev accuracy so far, train-metric window)
  best/<step>/         parameters of the best validation accuracy so far
"""

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
# Keys that change how a run goes, never what it computes: a different value resumes.
RUN_ONLY_KEYS = ("data_workers", "plot", "check_memory")


class ConfigMismatchError(ValueError):
  """The workdir was made by a different config."""


def config_record(config: ml_collections.ConfigDict | dict) -> dict:
  """The config as a run records it: JSON types, only the chosen attention's knobs.

  Keys in `RUN_ONLY_KEYS` (input workers, plotting, the memory check) are recorded but not
  compared: changing them resumes a run.

  A config carries a knob block for every registered attention (so any of them can be
  chosen from the command line); the others do not affect the run, so they are left out
  of the workdir stamp and of results.json, and changing their defaults never blocks a
  resume. Accepts a ConfigDict or a stored record (which may still hold every block).
  """
  record = json.loads(
    json.dumps(config.to_dict() if hasattr(config, "to_dict") else config, default=list)
  )
  knobs = record.get("attention_kwargs", {})
  record["attention_kwargs"] = {record["attention"]: knobs.get(record["attention"], {})}
  return record


def _diff(old, new, prefix=""):
  if isinstance(old, dict) and isinstance(new, dict):
    for key in sorted(set(old) | set(new)):
      yield from _diff(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}.")
  elif old != new:
    yield f"{prefix[:-1]}: stored {old!r}, now {new!r}"


def check_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses `config` when `workdir` holds the stamp of another config (writes nothing).

  Raises:
    ConfigMismatchError: listing every differing key.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    stored = config_record(json.load(f))
  current = config_record(config)
  for key in RUN_ONLY_KEYS:
    stored.pop(key, None)
    current.pop(key, None)
  differences = list(_diff(stored, current))
  if differences:
    raise ConfigMismatchError(
      f"workdir={workdir!r} was made by a different config ({path}), so it cannot be "
      f"resumed with this one. Differences: "
      + "; ".join(differences)
      + ". Use a new --workdir, or rerun with the stored config."
    )


def store_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the stamp of `config` into `workdir` unless it holds one (`check_config` first)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    return
  os.makedirs(workdir, exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(config_record(config), f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def check_or_store_config(
  workdir: str, config: ml_collections.ConfigDict, write: bool = True
) -> None:
  """`check_config`, then (`write`) `store_config`."""
  check_config(workdir, config)
  if write:
    store_config(workdir, config)


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
