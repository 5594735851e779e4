"""`prepare(task, data_dir)`: generate or convert a task's data into TFDS array_record files.

Generated tasks (listops, pathfinder*) are first written in the official release layout
under `<data_dir>/raw/` and then converted by the same code that reads the release, so
`--source=` and generation share one reader. Converted tasks read the downloads named in
`sources`. Where the examples come from is the task's business (`tasks.Task.split_examples`);
everything ends in `<data_dir>/lra_<task>/1.0.0/`, with a sha256 of every stored file
(`digests`).
"""

import contextlib
import json
import logging
import os
import shutil

import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from lra.data import builders, digests, errors, tasks

SOURCE_FILE = "lra_source.json"  # What the examples were made from (`SplitExamples.record`).


def is_prepared(task: tasks.Task | str, data_dir: str) -> bool:
  """True when every stored split of `task` (a `tasks.Task` or its name) is complete."""
  spec = tasks.as_task(task)
  info_path = os.path.join(builders.version_dir(spec, data_dir), "dataset_info.json")
  if not os.path.isfile(info_path):
    return False
  with open(info_path) as f:
    names = {s["name"] for s in json.load(f).get("splits", [])}
  return set(spec.stored_splits) <= names


@contextlib.contextmanager
def _progress_bars(enable: bool):
  """TFDS's progress bars on or off while writing (its switch is process-wide)."""
  was = tqdm_utils._active  # pylint: disable=protected-access
  tfds.display_progress_bar(enable)
  try:
    yield
  finally:
    tfds.display_progress_bar(was)


def _check_count(name: str, value: int | None) -> None:
  if value is not None and value < 1:
    raise ValueError(f"{name}={value} must be >= 1")


def prepare(
  task: tasks.Task | str,
  data_dir: str,
  *,
  source: str | None = None,
  seed: int = 0,
  num_train: int | None = None,
  num_val: int | None = None,
  num_test: int | None = None,
  max_tokens: int = 0,
  overwrite: bool = False,
  workers: int = 0,
  progress: bool = True,
) -> None:
  """Generates or converts `task` into `<data_dir>/lra_<task>/1.0.0/` (array_record).

  Data already there is checked against its digest and kept; data prepared before digests
  were written gets one, of the files as they are.

  Args:
    task: a `tasks.Task`, or the name of one of `tasks.TASKS`.
    data_dir: output folder (also where raw generated files and downloads live).
    source: official release files or downloads to convert; None generates ListOps and
      Pathfinder, and looks for Text/Image/Retrieval downloads in default places.
    seed: generator seed, and the seed of subset selection and Pathfinder's split.
    num_train, num_val, num_test: split sizes; None = official sizes (generated tasks) or
      everything in the source. lm: bytes of each split's stream.
    max_tokens: ListOps generation: > 0 makes expressions shorter than this; lm: the
      window length W (0: 2048), stored in its own sub-folder `w<W>`. A `tasks.Task` that
      already has a window (`Task.for_length`) keeps it when this is 0.
    overwrite: delete the task's stored files first (regenerate damaged data).
    workers: generator processes (0: every core); the data is the same for any count.
    progress: show TFDS's progress bars while writing (a trainer preparing its own small
      data turns them off).

  Raises:
    DataNotFoundError: the source files are missing (the message says what to fetch).
    DataCorruptError: the data already there differs from its digest.
    ValueError: bad arguments or bad source content (the message names the file).
  """
  spec = tasks.as_task(task).prepared_variant(max_tokens)
  task = spec.name
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
    _check_count(name, value)
  if max_tokens < 0:
    raise ValueError(f"max_tokens={max_tokens} must be >= 0")
  if workers < 0:
    raise ValueError(f"workers={workers} must be >= 0")
  counts = (num_train, num_val, num_test)
  command = errors.prepare_command(
    task,
    data_dir,
    source=source,
    seed=seed,
    counts=counts,
    max_tokens=max_tokens or spec.prepare_max_tokens,
  )
  version_dir = builders.version_dir(spec, data_dir)
  if overwrite and os.path.isdir(version_dir):
    logging.info("Deleting %s to prepare it anew", version_dir)
    shutil.rmtree(version_dir)
  if is_prepared(spec, data_dir):
    if digests.has_digest(version_dir):
      digests.verify(version_dir)
      logging.info("%s is already prepared in %s (digests match)", task, version_dir)
    else:
      digests.write(version_dir, command)
      logging.warning(
        "%s in %s was prepared before digests were written; recorded the files as they are in %s",
        task,
        version_dir,
        digests.DIGEST_FILE,
      )
    return
  splits = spec.split_examples(
    data_dir, source=source, seed=seed, counts=counts, max_tokens=max_tokens, workers=workers
  )
  builder = builders.make_builder(spec, data_dir, splits)
  with builders.deterministic_serialization(), _progress_bars(progress):
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
      )
    )
  record = getattr(splits, "record", None)
  if record is not None:
    with open(os.path.join(version_dir, SOURCE_FILE), "w") as f:
      json.dump(record, f, indent=2, sort_keys=True)
  digests.write(version_dir, command)


def source_record(task: tasks.Task | str, data_dir: str) -> dict | None:
  """What `task`'s prepared examples in `data_dir` were made from (`SOURCE_FILE`), if the
  task records it."""
  path = os.path.join(builders.version_dir(task, data_dir), SOURCE_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)
