"""The harness's side of the data: find or generate it, build loaders, place batches.

Batches come from `lra.data.pipeline` as numpy arrays of this process's share; `to_global`
turns them into one `jax.Array` sharded over the batch axis of the device mesh.
"""

import json
import logging
import os

import jax
import numpy as np

from lra import run_config
from lra.data import builders, digests, errors, pipeline, prepare_lib

GENERATED_STAMP = "lra_generated_{task}.json"
# Data does not depend on the training seed: every seed trains on the same examples.
DATA_SEED = 0


def resolve_data_dir(run: run_config.RunConfig, workdir: str) -> str:
  """`run.data_dir` with `~` expanded; "" means `<workdir>/data`."""
  if not run.data_dir:
    return os.path.join(workdir, "data")
  return os.path.abspath(os.path.expanduser(run.data_dir))


def generate_counts(run: run_config.RunConfig) -> tuple[int | None, int | None, int | None]:
  """The split sizes a run generates its data with (-1: the task's default or everything)."""
  return tuple(None if n == -1 else n for n in run.generate_sizes)


def _prepare_command(run: run_config.RunConfig, data_dir: str, task=None) -> str:
  task = task or run.task_spec
  if not run.generate_data:
    return errors.prepare_command(task.name, data_dir, max_tokens=task.prepare_max_tokens)
  return errors.prepare_command(
    task.name,
    data_dir,
    seed=DATA_SEED,
    counts=generate_counts(run),
    max_tokens=run.generate_max_tokens or task.prepare_max_tokens,
  )


def ensure_data(run: run_config.RunConfig, data_dir: str, task=None) -> None:
  """Checks the prepared data against its digests, or generates it when the config allows.

  `task`: the stored variant to check (default the run's, `run.task_spec`; the LM task's
  evaluation at other lengths passes the variants of those lengths).

  Raises:
    errors.DataNotFoundError: the data is missing and cannot be generated here; the
      message holds the exact `python -m lra.prepare ...` command.
    errors.DataCorruptError: a stored file differs from its digest; the message names the
      file and the command that regenerates it.
    ValueError: data generated with other settings is already in `data_dir`.
  """
  task = task or run.task_spec
  stamp_path = os.path.join(data_dir, GENERATED_STAMP.format(task=task.data_id))
  stamp = {
    "task": task.name,
    "sizes": list(run.generate_sizes),
    "max_tokens": run.generate_max_tokens,
    "seed": DATA_SEED,
  }
  if prepare_lib.is_prepared(task, data_dir):
    if run.generate_data and os.path.exists(stamp_path):
      with open(stamp_path) as f:
        if json.load(f) != stamp:
          raise ValueError(
            f"{data_dir} holds {task.name} data generated with other settings "
            f"({stamp_path}); set --run.data_dir to another folder"
          )
    version_dir = builders.version_dir(task, data_dir)
    if digests.has_digest(version_dir):
      digests.verify(version_dir)
    else:
      logging.warning(
        "%s was prepared before digests were written, so its files cannot be checked "
        "against damage; `%s` records them as they are.",
        version_dir,
        _prepare_command(run, data_dir, task),
      )
    return
  if not (run.generate_data and task.can_generate):
    raise errors.DataNotFoundError(
      f"No prepared {task.name!r} data in data_dir={data_dir!r}. Prepare it with:\n  "
      f"{_prepare_command(run, data_dir, task)}\n(or point --run.data_dir at prepared data)"
    )
  n_train, n_val, n_test = generate_counts(run)
  logging.info(
    "Generating %s data (%s/%s/%s) into %s", task.data_id, n_train, n_val, n_test, data_dir
  )
  os.makedirs(data_dir, exist_ok=True)
  prepare_lib.prepare(
    task,
    data_dir,
    seed=DATA_SEED,
    num_train=n_train,
    num_val=n_val,
    num_test=n_test,
    max_tokens=run.generate_max_tokens,
    progress=False,
  )
  with open(stamp_path, "w") as f:
    json.dump(stamp, f)


def data_workers(run: run_config.RunConfig) -> int:
  """Input processes of a run: `run.data_workers`, or from the core count when -1.

  Below 4 cores the reader stays in the training process (the workers would only take
  cores from XLA); above, half the cores, at most 8: about 3,300 ListOps examples/s per
  process, so 8 keep up with well over 100 steps/s of batch 32.
  """
  if run.data_workers >= 0:
    return run.data_workers
  cores = os.cpu_count() or 1
  return 0 if cores < 4 else min(8, cores // 2)


def make_loader(
  run: run_config.RunConfig,
  data_dir: str,
  split: str,
  *,
  batch_size: int,
  train: bool,
  workers: int = 0,
  length: int | None = None,
):
  """This process's loader of `split`; `batch_size` is global; `workers` reader processes.

  `length`: the model length to read at (default the run's `max_length`); the LM task
  reads its windows of that length (`tasks.Task.for_length`).
  """
  count = jax.process_count()
  if batch_size % count:
    raise ValueError(f"batch size {batch_size} must divide over {count} processes")
  length = run.max_length if length is None else length
  return pipeline.make_loader(
    run.task_spec.for_length(length),
    split,
    data_dir,
    batch_size=batch_size // count,
    seed=run.seed,
    shuffle=train,
    num_epochs=None if train else 1,
    max_length=length,
    # A ragged last eval batch is padded (see `pad_batch`); across hosts every shard
    # must yield the same number of batches, so multi-host eval drops the remainder.
    drop_remainder=train or count > 1,
    shard_index=jax.process_index(),
    num_shards=count,
    legacy_pixel_padding=run.legacy_pixel_padding,
    workers=workers,
  )


def pad_batch(batch: dict, batch_size: int) -> dict:
  """Pads a short batch to `batch_size` rows and adds `weight` (1 real, 0 padding)."""
  n = batch["inputs"].shape[0]
  out = {"weight": np.concatenate([np.ones(n, np.float32), np.zeros(batch_size - n, np.float32)])}
  for key, value in batch.items():
    pad = np.zeros((batch_size - n, *value.shape[1:]), value.dtype)
    out[key] = np.concatenate([value, pad])
  return out


def to_global(batch: dict, sharding: jax.sharding.Sharding) -> dict:
  """Process-local numpy rows -> global arrays sharded over the batch axis."""
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }
