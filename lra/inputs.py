"""The harness's side of the data: find or generate it, build loaders, place batches.

Batches come from `lra.data.pipeline` as numpy arrays of this process's share; `to_global`
turns them into one `jax.Array` sharded over the batch axis of the device mesh.
"""

import json
import logging
import os

import jax
import numpy as np

from lra.data import errors, listops, pipeline, prepare_lib, tasks

GENERATED_STAMP = "lra_generated_{task}.json"
# Data does not depend on the training seed: every seed trains on the same examples.
DATA_SEED = 0


def resolve_data_dir(config, workdir: str) -> str:
  """`config.data_dir` with `~` expanded; "" means `<workdir>/data`."""
  if not config.data_dir:
    return os.path.join(workdir, "data")
  return os.path.abspath(os.path.expanduser(config.data_dir))


def _prepare_command(config, data_dir: str) -> str:
  cmd = errors.prepare_command(config.task, data_dir)
  if config.generate_data:
    n_train, n_val, n_test = config.generate_sizes
    cmd += f" --num_train={n_train} --num_val={n_val} --num_test={n_test}"
  return cmd


def ensure_data(config, data_dir: str) -> None:
  """Generates missing data when the config allows it; otherwise says how to prepare it.

  Raises:
    pipeline.DataNotFoundError: the data is missing and cannot be generated here; the
      message holds the exact `python -m lra.prepare ...` command.
    ValueError: data generated with other settings is already in `data_dir`.
  """
  task = config.task
  stamp_path = os.path.join(data_dir, GENERATED_STAMP.format(task=task))
  stamp = {
    "task": task,
    "sizes": list(config.generate_sizes),
    "max_tokens": config.generate_max_tokens,
    "seed": DATA_SEED,
  }
  if prepare_lib.is_prepared(task, data_dir):
    if config.generate_data and os.path.exists(stamp_path):
      with open(stamp_path) as f:
        if json.load(f) != stamp:
          raise ValueError(
            f"{data_dir} holds {task} data generated with other settings "
            f"({stamp_path}); set --config.data_dir to another folder"
          )
    return
  generated = task == "listops" or task.startswith("pathfinder")
  if not (config.generate_data and generated):
    raise pipeline.DataNotFoundError(
      f"No prepared {task!r} data in data_dir={data_dir!r}. Prepare it with:\n  "
      f"{_prepare_command(config, data_dir)}\n(or point --config.data_dir at prepared data)"
    )
  n_train, n_val, n_test = config.generate_sizes
  logging.info("Generating %s data (%d/%d/%d) into %s", task, n_train, n_val, n_test, data_dir)
  os.makedirs(data_dir, exist_ok=True)
  source = None
  if config.generate_max_tokens:
    if task != "listops":
      raise ValueError(f"generate_max_tokens applies to listops only; got {task=}")
    source = _write_short_listops(data_dir, config.generate_sizes, config.generate_max_tokens)
  prepare_lib.prepare(
    task, data_dir, source=source, seed=DATA_SEED, num_train=n_train, num_val=n_val, num_test=n_test
  )
  with open(stamp_path, "w") as f:
    json.dump(stamp, f)


def _write_short_listops(data_dir: str, sizes, max_tokens: int) -> str:
  """ListOps TSVs (official layout) of expressions shorter than `max_tokens` tokens."""
  if max_tokens < 8:
    raise ValueError(f"generate_max_tokens={max_tokens} is too short for ListOps (>= 8)")
  folder = os.path.join(data_dir, "raw", f"listops-max{max_tokens}")
  cfg = listops.ListOpsConfig(min_length=max_tokens // 4, max_length=max_tokens)
  examples = listops.generate(sum(sizes), DATA_SEED, cfg)
  start = 0
  for split, size in zip(tasks.SPLITS, sizes):
    listops.write_tsv(
      os.path.join(folder, listops.SPLIT_FILES[split]), examples[start : start + size]
    )
    start += size
  return folder


def make_loader(config, data_dir: str, split: str, *, batch_size: int, train: bool):
  """This process's loader of `split`; `batch_size` is global."""
  count = jax.process_count()
  if batch_size % count:
    raise ValueError(f"batch size {batch_size} must divide over {count} processes")
  return pipeline.make_loader(
    config.task,
    split,
    data_dir,
    batch_size=batch_size // count,
    seed=config.seed,
    shuffle=train,
    num_epochs=None if train else 1,
    max_length=config.max_length,
    # A ragged last eval batch is padded (see `pad_batch`); across hosts every shard
    # must yield the same number of batches, so multi-host eval drops the remainder.
    drop_remainder=train or count > 1,
    shard_index=jax.process_index(),
    num_shards=count,
    legacy_pixel_padding=config.legacy_pixel_padding,
  )


def pad_batch(batch: dict, batch_size: int) -> dict:
  """Pads a short batch to `batch_size` rows and adds `weight` (1 real, 0 padding)."""
  n = batch["label"].shape[0]
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
