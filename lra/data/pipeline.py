"""Batches for training and evaluation: grain over the TFDS array_record files.

Each batch is a dict of numpy arrays:
  inputs  int32 [batch, max_length]    ([batch, 2, max_length] for retrieval)
  mask    bool, same shape as inputs   (True = real token)
  label   int32 [batch]                (classification tasks)
  targets int32 [batch, max_length]    (next-token tasks, instead of label: the next byte;
                                        the mask marks the positions that have one)

Token ids are the task's (`tasks.Task.token_ids`). On pixel tasks 0 is a real token: the
mask, not the id, marks padding.
`legacy_pixel_padding=True` reproduces the old harnesses (LRA, the MRA authors' code), whose mask is
`inputs != 0`, so black pixels were treated as padding.
"""

import collections
import json
import math
import multiprocessing

import grain.python as grain
import numpy as np
import tensorflow_datasets as tfds

from lra.data import builders, errors, prepare_lib, tasks

# Raised when a task is not prepared; the message gives the `python -m lra.prepare` command.
DataNotFoundError = errors.DataNotFoundError


def _data_source(task: tasks.Task, split: str, data_dir: str):
  stored = task.stored_split(split)
  if not prepare_lib.is_prepared(task, data_dir):
    raise errors.DataNotFoundError(
      f"No prepared {task.name!r} data in {builders.version_dir(task, data_dir)}; run "
      f"{errors.prepare_command(task.name, data_dir, max_tokens=task.prepare_max_tokens)}"
    )
  builder = tfds.builder_from_directory(builders.version_dir(task, data_dir))
  return builder.as_data_source(split=stored)


def num_examples(task: tasks.Task | str, split: str, data_dir: str) -> int:
  """Number of examples of `split` ("train", "validation", "test") of a prepared task."""
  return len(_data_source(tasks.as_task(task), split, data_dir))


class _Encode(grain.MapTransform):
  """Stored example -> padded int32 ids, bool mask and int32 label."""

  def __init__(self, task: tasks.Task, max_length: int, legacy_pixel_padding: bool):
    self._task = task
    self._max_length = max_length
    self._legacy = legacy_pixel_padding

  def _pad(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = ids[: self._max_length]
    inputs = np.zeros((self._max_length,), np.int32)
    mask = np.zeros((self._max_length,), bool)
    inputs[: ids.size] = ids
    mask[: ids.size] = True
    return inputs, mask

  def map(self, element):
    padded = [self._pad(ids) for ids in self._task.token_ids(element)]
    targets = self._task.targets(element)
    if targets is not None:  # One document, a target per position (the next byte).
      (inputs, mask), *_ = padded
      return {"inputs": inputs, "mask": mask, "targets": self._pad(targets)[0]}
    if self._task.dual_input:  # [2, max_length]: one row per document.
      inputs, mask = np.stack([p[0] for p in padded]), np.stack([p[1] for p in padded])
    else:
      (inputs, mask), *_ = padded
    if self._legacy:
      # Old harnesses: mask = inputs != 0. Only pixel tasks differ (ids elsewhere are >= 1).
      mask = inputs != 0
    return {"inputs": inputs, "mask": mask, "label": np.int32(element["label"])}


class Loader:
  """An iterable of batches whose position can be saved and restored.

  Iterating starts a new pass (from the start, or from a state given to `set_state`
  before iterating). `get_state`/`set_state` act on the most recent pass.
  """

  def __init__(self, data_loader: grain.DataLoader, batches_per_epoch: int):
    self._data_loader = data_loader
    self._batches_per_epoch = batches_per_epoch
    self._iterator = None
    self._pending_state = None

  def __iter__(self):
    self._iterator = iter(self._data_loader)
    if self._pending_state is not None:
      self._iterator.set_state(self._pending_state)
      self._pending_state = None
    return self._iterator

  def __len__(self) -> int:
    """Batches per epoch (of this shard)."""
    return self._batches_per_epoch

  def get_state(self) -> dict:
    """JSON-serialisable position of the current pass (the start if none began)."""
    if self._iterator is None:
      if self._pending_state is not None:
        return json.loads(self._pending_state.decode())
      self._iterator = iter(self._data_loader)
    return json.loads(self._iterator.get_state().decode())

  def set_state(self, state: dict) -> None:
    """Resumes exactly after the batch at which `state` was taken."""
    raw = json.dumps(state).encode()
    if self._iterator is None:
      self._pending_state = raw
    else:
      self._iterator.set_state(raw)

  def close(self) -> None:
    """Stops worker processes (none here)."""


# The worker side of `ParallelLoader`: each process opens the data once.
_WORKER_STATE: dict = {}


def _open_in_worker(task: tasks.Task, split: str, data_dir: str, encode: _Encode) -> None:
  _WORKER_STATE["source"] = _data_source(task, split, data_dir)
  _WORKER_STATE["encode"] = encode


def _read_batch(record_keys: list[int]) -> dict:
  source, encode = _WORKER_STATE["source"], _WORKER_STATE["encode"]
  items = [encode.map(source[key]) for key in record_keys]
  return {name: np.stack([item[name] for item in items]) for name in items[0]}


class ParallelLoader(Loader):
  """The batches of a `Loader`, read and encoded by `workers` processes.

  Batch b holds the same records as the in-process loader's batch b (grain's sampler
  decides, in order), so the worker count never changes what a run sees; the state is
  the in-process loader's, so a checkpoint resumes with any worker count. Up to
  `2 * workers` batches are read ahead.
  """

  def __init__(
    self,
    grain_loader: Loader,
    sampler: grain.IndexSampler,
    *,
    batch_size: int,
    drop_remainder: bool,
    shard_index: int,
    num_shards: int,
    workers: int,
    worker_args: tuple,
  ):
    super().__init__(grain_loader._data_loader, len(grain_loader))
    self._sampler = sampler
    self._batch_size = batch_size
    self._drop_remainder = drop_remainder
    self._shard_index = shard_index
    self._num_shards = num_shards
    self._workers = workers
    self._worker_args = worker_args
    self._pool = None
    self._template = None
    self._next_position = 0  # Local (per-shard) record position after the last batch given.

  def _keys(self, start: int) -> list[int]:
    keys = []
    for position in range(start, start + self._batch_size):
      try:
        keys.append(self._sampler[position * self._num_shards + self._shard_index].record_key)
      except IndexError:
        break
    if len(keys) < self._batch_size and (self._drop_remainder or not keys):
      return []
    return keys

  def __iter__(self):
    if self._pool is None:
      # spawn: the parent may hold JAX's threads, which a fork would copy half-way.
      self._pool = multiprocessing.get_context("spawn").Pool(
        self._workers, initializer=_open_in_worker, initargs=self._worker_args
      )
    if self._pending_state is not None:
      self._set_position(json.loads(self._pending_state.decode()))
      self._pending_state = None
    return self._batches(self._next_position)

  def _batches(self, start: int):
    ahead = collections.deque()
    position = start
    while True:
      while len(ahead) < 2 * self._workers:
        keys = self._keys(position)
        if not keys:
          break
        position += len(keys)
        ahead.append((self._pool.apply_async(_read_batch, (keys,)), position))
      if not ahead:
        return
      result, end = ahead.popleft()
      batch = result.get()
      self._next_position = end
      yield batch

  def _set_position(self, state: dict) -> None:
    last_seen = state["last_seen_indices"]["0"]
    self._next_position = (last_seen + self._num_shards - self._shard_index) // self._num_shards

  def get_state(self) -> dict:
    if self._template is None:
      self._template = json.loads(iter(self._data_loader).get_state().decode())
    last_seen = self._shard_index - self._num_shards + self._next_position * self._num_shards
    return {**self._template, "last_seen_indices": {"0": last_seen}}

  def set_state(self, state: dict) -> None:
    """Resumes exactly after the batch at which `state` was taken (next `iter` starts there)."""
    self._pending_state = None
    self._set_position(state)

  def close(self) -> None:
    if self._pool is not None:
      self._pool.terminate()
      self._pool = None


def make_loader(
  task: tasks.Task | str,
  split: str,
  data_dir: str,
  *,
  batch_size: int,
  seed: int,
  shuffle: bool,
  num_epochs: int | None = None,
  max_length: int | None = None,
  drop_remainder: bool = True,
  shard_index: int = 0,
  num_shards: int = 1,
  legacy_pixel_padding: bool = False,
  workers: int = 0,
) -> Loader:
  """Builds the batch iterator of one split of a prepared task.

  Args:
    task: the task (a `tasks.Task`, or its name).
    split: "train", "validation" or "test".
    data_dir: the folder given to `prepare`.
    batch_size: examples per batch (per shard).
    seed: shuffling seed; the same seed gives the same batches.
    shuffle: reshuffle every epoch (a fresh permutation per epoch).
    num_epochs: passes over the data; None repeats forever.
    max_length: sequence length; default the task's; shorter truncates, longer pads.
    drop_remainder: drop the last incomplete batch, and the examples that do not divide
      evenly over shards (so every shard yields the same number of batches).
    shard_index: this process's shard (e.g. `jax.process_index()`).
    num_shards: number of shards (e.g. `jax.process_count()`).
    legacy_pixel_padding: mask = inputs != 0 as in the old harnesses; this changes only
      pixel tasks, where black pixels then count as padding.
    workers: processes that read and encode batches (0: in this process, one reader
      thread). The batches and the state are the same for every count.

  Returns:
    A `Loader`.

  Raises:
    DataNotFoundError: the task is not prepared in `data_dir`.
    ValueError: a bad argument (named in the message).
  """
  spec = tasks.as_task(task)
  max_length = spec.max_length if max_length is None else max_length
  if max_length < 1:
    raise ValueError(f"{max_length=} must be >= 1")
  if batch_size < 1:
    raise ValueError(f"{batch_size=} must be >= 1")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"{num_epochs=} must be >= 1 or None")
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise ValueError(f"Need 0 <= shard_index < num_shards, got {shard_index=} {num_shards=}")
  if not 0 <= seed < 2**32:
    raise ValueError(f"{seed=} must be in [0, 2**32)")
  if workers < 0:
    raise ValueError(f"{workers=} must be >= 0")
  source = _data_source(spec, split, data_dir)
  num_records = len(source)
  per_shard = num_records // num_shards
  if not drop_remainder and shard_index < num_records % num_shards:
    per_shard += 1
  if per_shard == 0 or (drop_remainder and per_shard < batch_size):
    raise ValueError(
      f"{spec.name} {split} has {num_records} examples: too few for {batch_size=} "
      f"over {num_shards=} with {drop_remainder=}"
    )
  batches = per_shard // batch_size if drop_remainder else math.ceil(per_shard / batch_size)
  sampler = grain.IndexSampler(
    num_records=num_records,
    shard_options=grain.ShardOptions(
      shard_index=shard_index, shard_count=num_shards, drop_remainder=drop_remainder
    ),
    shuffle=shuffle,
    num_epochs=num_epochs,
    seed=seed,
  )
  encode = _Encode(spec, max_length, legacy_pixel_padding)
  data_loader = grain.DataLoader(
    data_source=source,
    sampler=sampler,
    operations=[
      encode,
      grain.Batch(batch_size=batch_size, drop_remainder=drop_remainder),
    ],
    worker_count=0,
    # One reader thread overlaps reading with the transform; grain's default (16
    # threads, 500 prefetched) spends its time polling futures: 3x slower here.
    read_options=grain.ReadOptions(num_threads=1, prefetch_buffer_size=64),
  )
  loader = Loader(data_loader, batches)
  if not workers:
    return loader
  return ParallelLoader(
    loader,
    sampler,
    batch_size=batch_size,
    drop_remainder=drop_remainder,
    shard_index=shard_index,
    num_shards=num_shards,
    workers=workers,
    worker_args=(spec, split, data_dir, encode),
  )
