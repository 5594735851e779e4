"""The LRA tasks and the byte-level LM task, each in one place: numbers, features, ids, splits.

A task is one `Task` object in `TASKS`. Everything that differs between tasks lives on its
class: what is stored (`features`), how a stored example becomes token ids (`token_ids`),
which splits are stored (`stored_splits`, `stored_split`) and where the examples come from
(`split_examples`: generated, or converted from the official release or a download). The
builders, `prepare`, the loader and the harness ask the task and never switch on its name,
so a new task is a new class here (plus its `configs/<task>.py`).

Token ids: ListOps its fixed vocabulary (`listops.VOCAB`, pad 0); text and retrieval byte
+ 1 (pad 0); pixel tasks the pixel value itself, so 0 is a real token there and only the
mask tells padding apart; the language-model task `lm` the byte itself (0 separates
documents), with the next byte as a per-position target (`targets`).
"""

import dataclasses
import difflib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from lra.data import corpus, errors, listops, pathfinder, pathfinder_files, sources

SPLITS = ("train", "validation", "test")
OBJECTIVES = ("classification", "next_token")
_ZLIB = tfds.features.Encoding.ZLIB


class SplitExamples(dict[str, Callable[[], Iterable[dict]]]):
  """{split: a callable returning that split's stored examples}, as the builders take them;
  `record`: JSON of what they were made from, stored beside them (`lra_source.json`)."""

  record: dict | None = None


# Requested (train, validation, test) sizes; None = the task's default or the whole source.
Counts = tuple[int | None, int | None, int | None]


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"Unknown {split=}; expected one of {SPLITS}")


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


def _bytes_tensor() -> tfds.features.Tensor:
  return tfds.features.Tensor(shape=(None,), dtype=np.uint8, encoding=_ZLIB)


@dataclasses.dataclass(frozen=True)
class Task:
  """Static description of one LRA task, and the task-specific parts of its data path.

  Attributes:
    name: task name, e.g. "listops" or "pathfinder32".
    num_classes: number of labels.
    max_length: model sequence length of the MRA-paper protocol (per document for retrieval).
    vocab_size: number of token ids including the pad id 0.
    dual_input: True when an example is a pair of documents (retrieval).
    image_shape: (height, width) for pixel tasks, None for text-like tasks.
  """

  name: str
  num_classes: int
  max_length: int
  vocab_size: int
  dual_input: bool = False
  image_shape: tuple[int, int] | None = None

  # Generated tasks make their data from a seed (`prepare` without --source); the others
  # convert downloads and say where to get them.
  can_generate: ClassVar[bool] = False
  stored_splits: ClassVar[tuple[str, ...]] = SPLITS
  # One label per example ("classification") or a target per position ("next_token").
  objective: ClassVar[str] = "classification"
  # A task whose examples are cut to the model's length stores one variant per length, in
  # the sub-folder `variant`; `prepare_max_tokens` is the --max_tokens that prepares it.
  variant: ClassVar[str | None] = None
  prepare_max_tokens: ClassVar[int] = 0
  stored_in_order: ClassVar[bool] = False  # Records in example order, not TFDS's shuffle.

  @property
  def data_id(self) -> str:
    """Names this stored variant in file names: the task name, and its variant if any."""
    return self.name if self.variant is None else f"{self.name}_{self.variant}"

  def for_length(self, length: int) -> "Task":
    """The task whose stored examples a model of `length` tokens reads."""
    del length
    return self

  def prepared_variant(self, max_tokens: int) -> "Task":
    """The task whose data `prepare(..., max_tokens=max_tokens)` writes."""
    del max_tokens
    return self

  def targets(self, example: dict) -> np.ndarray | None:
    """int32 per-position targets aligned with `token_ids` ("next_token"), else None."""
    del example
    return None

  def stored_split(self, split: str) -> str:
    """The stored split that serves `split` (a task without a validation split reads test)."""
    check_split(split)
    return split

  def features(self) -> tfds.features.FeaturesDict:
    """The TFDS features of one stored example."""
    raise NotImplementedError

  def token_ids(self, example: dict) -> list[np.ndarray]:
    """A stored example's int32 token ids, one 1-D array per document (row-major pixels)."""
    raise NotImplementedError

  def split_examples(
    self,
    data_dir: str,
    *,
    source: str | None,
    seed: int,
    counts: Counts,
    max_tokens: int = 0,
    workers: int = 0,
  ) -> SplitExamples:
    """Where each stored split's examples come from (generated or read from `source`).

    Args:
      data_dir: the output folder (generated raw files and downloads live under it).
      source: release files or downloads to convert; None generates (generated tasks) or
        looks in the default places.
      seed: generator seed, and the seed of subset selection.
      counts: requested split sizes.
      max_tokens: ListOps only: > 0 generates expressions shorter than this.
      workers: processes for generation (0: every core); the data never depends on it.
    """
    raise NotImplementedError

  def _no_max_tokens(self, max_tokens: int) -> None:
    if max_tokens:
      raise ValueError(f"max_tokens applies to listops only; got {max_tokens=} for {self.name}")


class ListOps(Task):
  """Nested MIN/MAX/MED/SM expressions; tokens uint8 [n] (fixed-vocabulary ids), label 0..9."""

  can_generate = True
  default_sizes = (96_000, 2_000, 2_000)

  def features(self):
    return tfds.features.FeaturesDict(
      {
        "tokens": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
        "label": tfds.features.ClassLabel(num_classes=self.num_classes),
      }
    )

  def token_ids(self, example):
    return [example["tokens"].astype(np.int32)]

  def split_examples(self, data_dir, *, source, seed, counts, max_tokens=0, workers=0):
    if source is None:
      folder = self._generate(data_dir, seed, counts, max_tokens, workers)
      counts = (None, None, None)
    elif max_tokens:
      raise ValueError(f"max_tokens={max_tokens} applies to generated ListOps, not to --source")
    else:
      folder = self._find_release(source, data_dir)
    out = {}
    for split, limit in zip(SPLITS, counts):
      path = os.path.join(folder, listops.SPLIT_FILES[split])
      if not os.path.isfile(path):
        raise ValueError(f"{path}: missing split file for {split!r}")
      out[split] = lambda p=path, n=limit: (
        {"tokens": ids.astype(np.uint8), "label": label}
        for ids, label in _limit(listops.read_tsv(p), n, p)
      )
    return out

  def _generate(
    self, data_dir: str, seed: int, counts: Counts, max_tokens: int, workers: int
  ) -> str:
    """Writes the official TSV layout under `<data_dir>/raw/` and returns its folder."""
    sizes = [c if c is not None else d for c, d in zip(counts, self.default_sizes)]
    if max_tokens:
      if max_tokens < 8:
        raise ValueError(f"max_tokens={max_tokens} is too short for ListOps (>= 8)")
      cfg = listops.ListOpsConfig(min_length=max_tokens // 4, max_length=max_tokens)
      folder = os.path.join(data_dir, "raw", f"listops-max{max_tokens}")
    else:
      cfg = listops.ListOpsConfig()
      folder = os.path.join(data_dir, "raw", "listops-1000")
    start = time.time()
    # One sequence for all splits, so no expression appears in two of them.
    listops.write_splits(folder, sizes, seed, cfg, workers=workers)
    logging.info(
      "listops: generated %d examples in %.1fs into %s", sum(sizes), time.time() - start, folder
    )
    return folder

  def _find_release(self, source: str, data_dir: str) -> str:
    for folder in (
      source,
      os.path.join(source, "listops-1000"),
      os.path.join(source, "lra_release", "listops-1000"),
    ):
      if os.path.isfile(os.path.join(folder, listops.SPLIT_FILES["train"])):
        return folder
    raise errors.DataNotFoundError(
      f"No {listops.SPLIT_FILES['train']} under --source={source} (or its listops-1000/). "
      f"Pass the release's listops-1000 folder, or omit --source to generate: "
      f"{errors.prepare_command(self.name, data_dir)}"
    )


class Text(Task):
  """Byte-level IMDb; tokens uint8 [n] ZLIB (raw UTF-8 bytes), label 0..1.

  IMDb has no validation split: like LRA and the MRA paper, validation reads test.
  """

  stored_splits = ("train", "test")

  def stored_split(self, split):
    check_split(split)
    return "test" if split == "validation" else split

  def features(self):
    return tfds.features.FeaturesDict(
      {"tokens": _bytes_tensor(), "label": tfds.features.ClassLabel(num_classes=self.num_classes)}
    )

  def token_ids(self, example):
    return [example["tokens"].astype(np.int32) + 1]

  def split_examples(self, data_dir, *, source, seed, counts, max_tokens=0, workers=0):
    self._no_max_tokens(max_tokens)
    src = sources.find_imdb(source, data_dir)
    out = {}
    for split, limit in (("train", counts[0]), ("test", counts[2])):
      examples = _subset(list(sources.read_imdb(src, split)), limit, seed, f"{src.path} {split}")
      out[split] = lambda e=examples: (
        {"tokens": np.frombuffer(text, np.uint8), "label": label} for text, label in e
      )
    return out


class Retrieval(Task):
  """AAN citation pairs; tokens1, tokens2 uint8 [n] ZLIB (raw bytes), label 0..1."""

  def features(self):
    return tfds.features.FeaturesDict(
      {
        "tokens1": _bytes_tensor(),
        "tokens2": _bytes_tensor(),
        "label": tfds.features.ClassLabel(num_classes=self.num_classes),
      }
    )

  def token_ids(self, example):
    return [example[k].astype(np.int32) + 1 for k in ("tokens1", "tokens2")]

  def split_examples(self, data_dir, *, source, seed, counts, max_tokens=0, workers=0):
    del seed
    self._no_max_tokens(max_tokens)
    folder = sources.find_aan(source, data_dir)
    out = {}
    for split, limit in zip(SPLITS, counts):
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


class _Pixels(Task):
  """A pixel task: image uint8 [H, W], label; ids are the pixel values in row-major order."""

  image_encoding = tfds.features.Encoding.NONE

  def features(self):
    return tfds.features.FeaturesDict(
      {
        "image": tfds.features.Tensor(
          shape=self.image_shape, dtype=np.uint8, encoding=self.image_encoding
        ),
        "label": tfds.features.ClassLabel(num_classes=self.num_classes),
      }
    )

  def token_ids(self, example):
    return [example["image"].reshape(-1).astype(np.int32)]


class Image(_Pixels):
  """Grayscale CIFAR-10: image uint8 [32, 32], label 0..9; validation is train's last 10 %."""

  def split_examples(self, data_dir, *, source, seed, counts, max_tokens=0, workers=0):
    self._no_max_tokens(max_tokens)
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


class Pathfinder(_Pixels):
  """Are the two dots connected? image uint8 [S, S] ZLIB, label 0..1; 80/10/10 split."""

  can_generate = True
  default_sizes = (160_000, 20_000, 20_000)
  image_encoding = _ZLIB

  def split_examples(self, data_dir, *, source, seed, counts, max_tokens=0, workers=0):
    self._no_max_tokens(max_tokens)
    size = self.image_shape[0]
    if source is None:
      counts = tuple(c if c is not None else d for c, d in zip(counts, self.default_sizes))
      root = self._generate(data_dir, seed, sum(counts), workers)
    else:
      try:
        root = pathfinder_files.find_root(source, size)
      except FileNotFoundError as e:
        raise errors.DataNotFoundError(
          f"{e}. Pass the release's pathfinder{size}/{pathfinder_files.CONTOUR_DIR} folder "
          f"(from {errors.LRA_RELEASE_URL}), or omit --source to generate: "
          f"{errors.prepare_command(self.name, data_dir)}"
        ) from e
    items, skipped = pathfinder_files.read_index(root)
    if skipped:
      logging.warning("%s: skipped %d empty PNGs under %s", self.name, skipped, root)
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

  def _generate(self, data_dir: str, seed: int, total: int, workers: int = 0) -> str:
    """Writes `total` images in the release layout under `<data_dir>/raw/` (resumable)."""
    root = os.path.join(data_dir, "raw", self.name, pathfinder_files.CONTOUR_DIR)
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
    config = pathfinder.CONFIGS[self.image_shape[0]]
    seconds = pathfinder_files.generate(config, root, total, seed, num_workers=workers or None)
    logging.info(
      "%s: %d images in %.1fs (%.1f images/s)",
      self.name,
      total,
      seconds,
      total / max(seconds, 1e-9),
    )
    return root


@dataclasses.dataclass(frozen=True)
class LanguageModel(Task):
  """Next-byte prediction on a byte corpus (`lra.data.corpus`): the Python standard
  library's sources, or `--source=DIR`.

  Stored per window length W (`window`, a sub-folder `w<W>`): examples `bytes` uint8
  [W + 1] ZLIB (the last of a split shorter), cut at stride W from the split's byte stream.
  A model of length W reads bytes 0..W-1 (ids = bytes; 0 separates documents) and predicts
  bytes 1..W. Sizes (`counts`) are bytes of each split's stream (`corpus.stream`).
  """

  window: int | None = None

  can_generate = True  # Every machine has its standard library: nothing to download.
  objective = "next_token"
  stored_in_order = True

  @property
  def variant(self):  # pylint: disable=invalid-overridden-method
    return None if self.window is None else f"w{self.window}"

  @property
  def prepare_max_tokens(self):  # pylint: disable=invalid-overridden-method
    return self.window or 0

  def for_length(self, length):
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
      raise ValueError(
        f"the {self.name} window (max_length, or --max_tokens) must be an int >= 1; got {length!r}"
      )
    return dataclasses.replace(self, window=length, max_length=length)

  def prepared_variant(self, max_tokens):
    if max_tokens:
      return self.for_length(max_tokens)
    return self if self.window else self.for_length(self.max_length)

  def features(self):
    return tfds.features.FeaturesDict({"bytes": _bytes_tensor()})

  def token_ids(self, example):
    return [example["bytes"][:-1].astype(np.int32)]

  def targets(self, example):
    return example["bytes"][1:].astype(np.int32)

  def split_examples(self, data_dir, *, source, seed, counts, max_tokens=0, workers=0):
    del data_dir, seed, workers  # The split is a hash of each path; nothing is random.
    if self.window is None or (max_tokens and max_tokens != self.window):
      raise ValueError(f"{self.name}: max_tokens={max_tokens} must be the window {self.window}")
    streams, record = corpus.split_streams(corpus.read(source), counts, self.window)
    out = SplitExamples(
      {
        split: lambda d=data: ({"bytes": w} for w in corpus.windows(d, self.window))
        for split, data in streams.items()
      }
    )
    out.record = record
    return out


TASKS: dict[str, Task] = {
  t.name: t
  for t in (
    ListOps("listops", 10, 2048, len(listops.VOCAB)),
    Text("text", 2, 4096, 257),
    Retrieval("retrieval", 2, 4096, 257, dual_input=True),
    Image("image", 10, 1024, 256, image_shape=(32, 32)),
    *(Pathfinder(f"pathfinder{s}", 2, s * s, 256, image_shape=(s, s)) for s in (32, 64, 128, 256)),
    LanguageModel("lm", 256, 2048, 256),
  )
}


def get_task(name: str) -> Task:
  """Returns the `Task` named `name`; ValueError listing the known tasks otherwise."""
  if name not in TASKS:
    close = difflib.get_close_matches(str(name), list(TASKS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown task={name!r}{hint}; known tasks: {sorted(TASKS)}")
  return TASKS[name]


def as_task(task: "Task | str") -> Task:
  """`task` itself, or the `Task` it names (entry points take either; callers inside the
  package pass the object they were given, so a name is looked up once)."""
  return task if isinstance(task, Task) else get_task(task)
