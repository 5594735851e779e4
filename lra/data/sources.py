"""Finds and reads the downloaded sources of Text (IMDb), Image (CIFAR-10) and Retrieval (AAN).

Each `find_*` returns a `Source` (kind, path) or raises `DataNotFoundError` saying what to
download and where to put it; each `read_*` yields one split's examples and raises
`ValueError` naming the file for bad content.
"""

import dataclasses
import io
import os
import pickle
import tarfile
from collections.abc import Iterator

import numpy as np
from PIL import Image

from lra.data import errors, tfds_files

# Retrieval documents are cut to this many bytes when stored (the official pipeline keeps
# 10,000 bytes, then 4,000 ids); loaders can use any max_length up to it.
MAX_DOCUMENT_BYTES = 16384
AAN_FILES = {
  "train": "new_aan_pairs.train.tsv",
  "validation": "new_aan_pairs.eval.tsv",
  "test": "new_aan_pairs.test.tsv",
}


@dataclasses.dataclass(frozen=True)
class Source:
  kind: str  # "tar", "dir" or "tfds"
  path: str


def _default_tfds_dirs() -> list[str]:
  dirs = []
  if os.environ.get("TFDS_DATA_DIR"):
    dirs.append(os.environ["TFDS_DATA_DIR"])
  dirs.append(os.path.expanduser("~/tensorflow_datasets"))
  return dirs


def _find(candidates, raw_dir_marker, archive_names, tfds_name, tfds_config):
  for c in candidates:
    if os.path.isfile(c) and (c.endswith((".tar.gz", ".tgz", ".tar"))):
      return Source("tar", c)
    if not os.path.isdir(c):
      continue
    for sub in ("", *raw_dir_marker[1:]):
      if os.path.exists(os.path.join(c, sub, raw_dir_marker[0])):
        return Source("dir", os.path.join(c, sub))
    for name in archive_names:
      if os.path.isfile(os.path.join(c, name)):
        return Source("tar", os.path.join(c, name))
    version_dir = tfds_files.find_version_dir(c, tfds_name, tfds_config)
    if version_dir:
      return Source("tfds", version_dir)
  return None


def find_imdb(source: str | None, data_dir: str) -> Source:
  candidates = (
    [source] if source else [os.path.join(data_dir, "downloads"), data_dir, *_default_tfds_dirs()]
  )
  found = _find(
    candidates, ("train/pos", "aclImdb"), ("aclImdb_v1.tar.gz",), "imdb_reviews", "plain_text"
  )
  if found is None:
    where = f"--source={source}" if source else f"{candidates}"
    raise errors.DataNotFoundError(
      f"IMDb not found (looked at {where}). Download {errors.IMDB_URL} and put it at "
      f"{os.path.join(data_dir, 'downloads', 'aclImdb_v1.tar.gz')} (or pass --source= the "
      "archive, its unpacked aclImdb/ folder, or a TFDS data dir holding "
      "imdb_reviews/plain_text/1.0.0 made by `tfds build imdb_reviews`), then run "
      f"{errors.prepare_command('text', data_dir)}"
    )
  return found


def read_imdb(src: Source, split: str) -> Iterator[tuple[bytes, int]]:
  """Yields (review bytes, label 0=neg/1=pos) of IMDb split "train" or "test"."""
  if src.kind == "tfds":
    where = f"{src.path} ({split})"
    for ex in tfds_files.read_split(src.path, split):
      label = tfds_files.int_feature(ex, "label", where)
      if label not in (0, 1):
        raise ValueError(f"{where}: label {label} outside {{0, 1}}")
      yield tfds_files.bytes_feature(ex, "text", where), label
    return
  count = 0
  if src.kind == "tar":
    try:
      with tarfile.open(src.path) as tar:
        for member in tar:
          parts = member.name.split("/")
          if (
            member.isfile()
            and len(parts) >= 4
            and parts[-3] == split
            and parts[-2] in ("neg", "pos")
            and parts[-1].endswith(".txt")
          ):
            count += 1
            yield tar.extractfile(member).read(), int(parts[-2] == "pos")
    except (tarfile.TarError, EOFError, OSError) as e:
      raise ValueError(f"{src.path}: corrupt or truncated archive ({e})") from e
  else:
    for label, name in enumerate(("neg", "pos")):
      folder = os.path.join(src.path, split, name)
      if not os.path.isdir(folder):
        raise ValueError(f"{folder}: missing (expected the aclImdb layout {split}/{name}/*.txt)")
      for fname in sorted(os.listdir(folder)):
        if fname.endswith(".txt"):
          count += 1
          with open(os.path.join(folder, fname), "rb") as f:
            yield f.read(), label
  if count == 0:
    raise ValueError(f"{src.path}: no reviews for split {split!r} (aclImdb/{split}/pos|neg)")


def find_cifar10(source: str | None, data_dir: str) -> Source:
  candidates = (
    [source] if source else [os.path.join(data_dir, "downloads"), data_dir, *_default_tfds_dirs()]
  )
  found = _find(
    candidates, ("test_batch", "cifar-10-batches-py"), ("cifar-10-python.tar.gz",), "cifar10", None
  )
  if found is None:
    where = f"--source={source}" if source else f"{candidates}"
    raise errors.DataNotFoundError(
      f"CIFAR-10 not found (looked at {where}). Download {errors.CIFAR10_URL} and put it "
      f"at {os.path.join(data_dir, 'downloads', 'cifar-10-python.tar.gz')} (or pass "
      "--source= the archive, its unpacked cifar-10-batches-py/ folder, or a TFDS data "
      "dir holding cifar10/3.0.2 made by `tfds build cifar10`), then run "
      f"{errors.prepare_command('image', data_dir)}"
    )
  return found


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] -> uint8 [...], as tf.image.rgb_to_grayscale on uint8 input.

  TF converts to float32 in [0, 1], takes 0.2989 R + 0.5870 G + 0.1140 B and converts back
  by multiplying with 255.5 and truncating.
  """
  flt = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
  gray = flt @ np.asarray([0.2989, 0.5870, 0.1140], np.float32)
  return np.clip(gray * np.float32(255.5), 0, 255).astype(np.uint8)


def _unpickle(data: bytes, where: str):
  try:
    batch = pickle.loads(data, encoding="bytes")
    images = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{where}: not a CIFAR-10 python batch ({e})") from e
  if images.ndim != 2 or images.shape[1] != 3072 or len(labels) != len(images):
    raise ValueError(
      f"{where}: CIFAR-10 batch with data shape {images.shape} and "
      f"{len(labels)} labels, expected [n, 3072] and n labels"
    )
  return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar10(src: Source, split: str) -> Iterator[tuple[np.ndarray, int]]:
  """Yields (grayscale uint8 [32, 32], label) of CIFAR-10 split "train" or "test" in order."""
  if src.kind == "tfds":
    where = f"{src.path} ({split})"
    for ex in tfds_files.read_split(src.path, split):
      png = tfds_files.bytes_feature(ex, "image", where)
      try:
        rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
      except OSError as e:
        raise ValueError(f"{where}: undecodable image ({e})") from e
      yield _checked(rgb_to_gray(rgb), tfds_files.int_feature(ex, "label", where), where)
    return
  names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
  blobs = {}
  if src.kind == "tar":
    try:
      with tarfile.open(src.path) as tar:
        for member in tar:
          base = member.name.split("/")[-1]
          if member.isfile() and base in names:
            blobs[base] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as e:
      raise ValueError(f"{src.path}: corrupt or truncated archive ({e})") from e
  else:
    for name in names:
      path = os.path.join(src.path, name)
      if os.path.isfile(path):
        with open(path, "rb") as f:
          blobs[name] = f.read()
  missing = [n for n in names if n not in blobs]
  if missing:
    raise ValueError(f"{src.path}: missing CIFAR-10 batch files {missing}")
  for name in names:
    images, labels = _unpickle(blobs[name], f"{src.path}:{name}")
    gray = rgb_to_gray(images)
    for image, label in zip(gray, labels):
      yield _checked(image, int(label), f"{src.path}:{name}")


def _checked(image, label, where):
  if not 0 <= label < 10:
    raise ValueError(f"{where}: label {label} outside 0..9")
  if image.shape != (32, 32):
    raise ValueError(f"{where}: image shape {image.shape}, expected (32, 32)")
  return image, label


def find_aan(source: str | None, data_dir: str) -> str:
  """The folder holding `new_aan_pairs.*.tsv` (the release's `tsv_data/`)."""
  roots = [source] if source else [os.path.join(data_dir, "downloads"), data_dir]
  for root in roots:
    for sub in ("", "tsv_data", "lra_release/tsv_data", "lra_release/lra_release/tsv_data"):
      folder = os.path.join(root, sub)
      if os.path.isfile(os.path.join(folder, AAN_FILES["train"])):
        return folder
  where = f"--source={source}" if source else f"{roots}"
  raise errors.DataNotFoundError(
    f"AAN pairs not found (looked at {where} and their tsv_data/ folders). Download "
    f"{errors.LRA_RELEASE_URL} (~8 GB), unpack it and pass --source= its "
    "lra_release/tsv_data folder (or copy new_aan_pairs.{train,eval,test}.tsv to "
    f"{os.path.join(data_dir, 'downloads', 'tsv_data')}), then run "
    f"{errors.prepare_command('retrieval', data_dir)}"
  )


def read_aan(folder: str, split: str) -> Iterator[tuple[bytes, bytes, int]]:
  """Yields (doc1, doc2, label) from `new_aan_pairs.<split>.tsv`: label, id1, id2, text1, text2.

  Texts keep their first `MAX_DOCUMENT_BYTES` bytes. Fields are split on tabs only (the
  official reader disables quote handling).
  """
  path = os.path.join(folder, AAN_FILES[split])
  if not os.path.isfile(path):
    raise ValueError(f"{path}: missing split file for {split!r}")
  count = 0
  with open(path, "rb") as f:
    for line_no, line in enumerate(f, start=1):
      line = line.rstrip(b"\r\n")
      if not line:
        continue
      fields = line.split(b"\t")
      if len(fields) != 5:
        raise ValueError(
          f"{path}:{line_no}: expected 5 tab-separated columns "
          f"(label, id1, id2, text1, text2), got {len(fields)}"
        )
      try:
        label = int(float(fields[0]))
      except ValueError as e:
        raise ValueError(f"{path}:{line_no}: label {fields[0][:20]!r} is not a number") from e
      if label not in (0, 1):
        raise ValueError(f"{path}:{line_no}: label {label} outside {{0, 1}}")
      count += 1
      yield fields[3][:MAX_DOCUMENT_BYTES], fields[4][:MAX_DOCUMENT_BYTES], label
  if count == 0:
    raise ValueError(f"{path}: no examples")
