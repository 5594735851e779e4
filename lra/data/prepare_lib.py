"""`prepare(task, data_dir)`: generate or convert a task's data into TFDS array_record files.

Generated tasks (listops, pathfinder*) are first written in the official release layout
under `<data_dir>/raw/` and then converted by the same code that reads the release, so
`--source=` and generation share one reader. Converted tasks read the downloads named in
`sources`. Everything ends in `<data_dir>/lra_<task>/1.0.0/`.
"""

import itertools
import json
import logging
import os
import time

import numpy as np
import tensorflow_datasets as tfds

from lra.data import builders, errors, listops, pathfinder, pathfinder_files, sources, tasks

# Official split sizes; retrieval and text take whatever the files hold.
DEFAULT_SIZES = {
  "listops": (96_000, 2_000, 2_000),
  "pathfinder": (160_000, 20_000, 20_000),
}
# Text has no validation split: like LRA and the MRA paper, validation reads test.
SPLIT_ALIASES = {"text": {"validation": "test"}}


def stored_splits(task: str) -> tuple[str, ...]:
  return ("train", "test") if task == "text" else tasks.SPLITS


def is_prepared(task: str, data_dir: str) -> bool:
  """True when every stored split of `task` is complete under `data_dir`."""
  tasks.get_task(task)
  info_path = os.path.join(builders.version_dir(task, data_dir), "dataset_info.json")
  if not os.path.isfile(info_path):
    return False
  with open(info_path) as f:
    names = {s["name"] for s in json.load(f).get("splits", [])}
  return set(stored_splits(task)) <= names


def _check_count(name: str, value: int | None) -> None:
  if value is not None and value < 1:
    raise ValueError(f"{name}={value} must be >= 1")


def _limit(examples, limit: int | None, where: str):
  """Yields the first `limit` examples; ValueError if the source holds fewer."""
  count = 0
  for ex in examples:
    if limit is not None and count >= limit:
      return
    count += 1
    yield ex
  if limit is not None and count < limit:
    raise ValueError(f"{where}: holds {count} examples, {limit} requested")


def _subset(items: list, limit: int | None, seed: int, where: str) -> list:
  """A seeded random subset (kept in source order) of `limit` items, or all of them."""
  if limit is None:
    return items
  if limit > len(items):
    raise ValueError(f"{where}: holds {len(items)} examples, {limit} requested")
  keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:limit])
  return [items[i] for i in keep]


def _listops_splits(data_dir, source, seed, counts):
  if source is None:
    n_train, n_val, n_test = (
      c if c is not None else d for c, d in zip(counts, DEFAULT_SIZES["listops"])
    )
    folder = os.path.join(data_dir, "raw", "listops-1000")
    start = time.time()
    # One stream for all splits, so no expression appears in two of them.
    stream = listops.generate_iter(seed)
    for split, n in zip(tasks.SPLITS, (n_train, n_val, n_test)):
      listops.write_tsv(
        os.path.join(folder, listops.SPLIT_FILES[split]), itertools.islice(stream, n)
      )
    logging.info(
      "listops: generated %d examples in %.1fs into %s",
      n_train + n_val + n_test,
      time.time() - start,
      folder,
    )
    counts = (None, None, None)
  else:
    for folder in (
      source,
      os.path.join(source, "listops-1000"),
      os.path.join(source, "lra_release", "listops-1000"),
    ):
      if os.path.isfile(os.path.join(folder, listops.SPLIT_FILES["train"])):
        break
    else:
      raise errors.DataNotFoundError(
        f"No {listops.SPLIT_FILES['train']} under --source={source} (or its listops-1000/). "
        f"Pass the release's listops-1000 folder, or omit --source to generate: "
        f"{errors.prepare_command('listops', data_dir)}"
      )
  out = {}
  for split, limit in zip(tasks.SPLITS, counts):
    path = os.path.join(folder, listops.SPLIT_FILES[split])
    if not os.path.isfile(path):
      raise ValueError(f"{path}: missing split file for {split!r}")
    out[split] = lambda p=path, n=limit: (
      {"tokens": ids.astype(np.uint8), "label": label}
      for ids, label in _limit(listops.read_tsv(p), n, p)
    )
  return out


def _pathfinder_splits(task, data_dir, source, seed, counts):
  size = tasks.get_task(task).image_shape[0]
  if source is None:
    n_train, n_val, n_test = (
      c if c is not None else d for c, d in zip(counts, DEFAULT_SIZES["pathfinder"])
    )
    total = n_train + n_val + n_test
    root = os.path.join(data_dir, "raw", task, pathfinder_files.CONTOUR_DIR)
    stamp = {"seed": seed, "num_images": total, "generator": "lra.data.pathfinder v1"}
    stamp_path = os.path.join(root, "generator.json")
    if os.path.isfile(stamp_path):
      with open(stamp_path) as f:
        if json.load(f) != stamp:
          raise ValueError(
            f"{root} holds images generated with other settings "
            f"({stamp_path}); delete the folder or use another --data_dir"
          )
    os.makedirs(root, exist_ok=True)
    with open(stamp_path, "w") as f:
      json.dump(stamp, f)
    seconds = pathfinder_files.generate(pathfinder.CONFIGS[size], root, total, seed)
    logging.info(
      "%s: %d images in %.1fs (%.1f images/s)", task, total, seconds, total / max(seconds, 1e-9)
    )
    counts = (n_train, n_val, n_test)
  else:
    try:
      root = pathfinder_files.find_root(source, size)
    except FileNotFoundError as e:
      raise errors.DataNotFoundError(
        f"{e}. Pass the release's pathfinder{size}/{pathfinder_files.CONTOUR_DIR} folder "
        f"(from {errors.LRA_RELEASE_URL}), or omit --source to generate: "
        f"{errors.prepare_command(task, data_dir)}"
      ) from e
  items, skipped = pathfinder_files.read_index(root)
  if skipped:
    logging.warning("%s: skipped %d empty PNGs under %s", task, skipped, root)
  order = np.random.default_rng(seed).permutation(len(items))
  # Unset sizes follow LRA's 80/10/10 split of what the folder holds.
  n_val = len(items) // 10 if counts[1] is None else counts[1]
  n_test = len(items) // 10 if counts[2] is None else counts[2]
  n_train = len(items) - n_val - n_test if counts[0] is None else counts[0]
  if n_train + n_val + n_test > len(items):
    raise ValueError(f"{root}: holds {len(items)} images, {n_train + n_val + n_test} requested")
  bounds = {
    "train": (0, n_train),
    "validation": (n_train, n_train + n_val),
    "test": (n_train + n_val, n_train + n_val + n_test),
  }
  out = {}
  for split, (lo, hi) in bounds.items():
    chosen = [items[i] for i in order[lo:hi]]
    if not chosen:
      raise ValueError(f"{root}: split {split!r} would be empty")
    out[split] = lambda c=chosen: (
      {"image": pathfinder_files.load_png(p, size), "label": label} for p, label in c
    )
  return out


def _text_splits(data_dir, source, seed, counts):
  src = sources.find_imdb(source, data_dir)
  out = {}
  for split, limit in (("train", counts[0]), ("test", counts[2])):
    examples = _subset(list(sources.read_imdb(src, split)), limit, seed, f"{src.path} {split}")
    out[split] = lambda e=examples: (
      {"tokens": np.frombuffer(text, np.uint8), "label": label} for text, label in e
    )
  return out


def _image_splits(data_dir, source, seed, counts):
  src = sources.find_cifar10(source, data_dir)
  train_all = list(sources.read_cifar10(src, "train"))
  n_train = len(train_all) * 9 // 10  # LRA: train[:90%] / train[90%:]
  parts = {
    "train": train_all[:n_train],
    "validation": train_all[n_train:],
    "test": list(sources.read_cifar10(src, "test")),
  }
  out = {}
  for (split, examples), limit in zip(parts.items(), counts):
    examples = _subset(examples, limit, seed, f"{src.path} {split}")
    out[split] = lambda e=examples: ({"image": im, "label": label} for im, label in e)
  return out


def _retrieval_splits(data_dir, source, seed, counts):
  del seed
  folder = sources.find_aan(source, data_dir)
  out = {}
  for split, limit in zip(tasks.SPLITS, counts):
    where = os.path.join(folder, sources.AAN_FILES[split])
    out[split] = lambda s=split, n=limit, w=where: (
      {
        "tokens1": np.frombuffer(d1, np.uint8),
        "tokens2": np.frombuffer(d2, np.uint8),
        "label": label,
      }
      for d1, d2, label in _limit(sources.read_aan(folder, s), n, w)
    )
  return out


def prepare(
  task: str,
  data_dir: str,
  *,
  source: str | None = None,
  seed: int = 0,
  num_train: int | None = None,
  num_val: int | None = None,
  num_test: int | None = None,
) -> None:
  """Generates or converts `task` into `<data_dir>/lra_<task>/1.0.0/` (array_record).

  Args:
    task: one of `tasks.TASKS`.
    data_dir: output folder (also where raw generated files and downloads live).
    source: official release files or downloads to convert; None generates ListOps and
      Pathfinder, and looks for Text/Image/Retrieval downloads in default places.
    seed: generator seed, and the seed of subset selection and Pathfinder's split.
    num_train, num_val, num_test: split sizes; None = official sizes (generated tasks) or
      everything in the source.

  Raises:
    DataNotFoundError: the source files are missing (the message says what to fetch).
    ValueError: bad arguments or bad source content (the message names the file).
  """
  tasks.get_task(task)
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
    _check_count(name, value)
  if is_prepared(task, data_dir):
    logging.info("%s is already prepared in %s", task, builders.version_dir(task, data_dir))
    return
  counts = (num_train, num_val, num_test)
  if task == "listops":
    splits = _listops_splits(data_dir, source, seed, counts)
  elif task.startswith("pathfinder"):
    splits = _pathfinder_splits(task, data_dir, source, seed, counts)
  elif task == "text":
    splits = _text_splits(data_dir, source, seed, counts)
  elif task == "image":
    splits = _image_splits(data_dir, source, seed, counts)
  else:
    splits = _retrieval_splits(data_dir, source, seed, counts)
  builder = builders.BUILDERS[task](
    data_dir=data_dir, file_format="array_record", split_examples=splits
  )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    )
  )
