"""Tiny source fixtures in the exact formats of the real downloads (no network)."""

import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image
from tensorflow_datasets.proto import tf_example_pb2

from lra.data import tfds_files

IMDB_TEXT = "Caf\u00e9 <br /><br />review {i} of {split} {label} \u2713"


def write_imdb_dir(root: str, per_class: int = 3) -> str:
  base = os.path.join(root, "aclImdb")
  for split in ("train", "test"):
    for label in ("neg", "pos"):
      folder = os.path.join(base, split, label)
      os.makedirs(folder)
      for i in range(per_class):
        with open(os.path.join(folder, f"{i}_7.txt"), "wb") as f:
          f.write(IMDB_TEXT.format(i=i, split=split, label=label).encode())
  return base


def _example(**features) -> bytes:
  ex = tf_example_pb2.Example()
  for key, value in features.items():
    if isinstance(value, bytes):
      ex.features.feature[key].bytes_list.value.append(value)
    else:
      ex.features.feature[key].int64_list.value.append(int(value))
  return ex.SerializeToString()


def write_tfds_dir(
  root: str,
  name: str,
  config: str | None,
  version: str,
  splits: dict[str, list[dict]],
  file_format: str = "tfrecord",
) -> str:
  folder = os.path.join(root, name, *([config] if config else []), version)
  os.makedirs(folder)
  info = {"name": name, "fileFormat": file_format, "splits": []}
  for split, examples in splits.items():
    records = [_example(**ex) for ex in examples]
    path = os.path.join(folder, f"{name}-{split}.{file_format}-00000-of-00001")
    if file_format == "tfrecord":
      tfds_files.write_tfrecord(path, records)
    else:
      from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

      writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
      for rec in records:
        writer.write(rec)
      writer.close()
    info["splits"].append({"name": split, "shardLengths": [str(len(records))]})
  with open(os.path.join(folder, "dataset_info.json"), "w") as f:
    json.dump(info, f)
  return folder


def cifar_rgb(n: int, offset: int) -> tuple[np.ndarray, list[int]]:
  rng = np.random.default_rng(offset)
  images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
  images[:, 0, 0, :] = 0  # a black pixel: a real token, not padding
  return images, [int(x) for x in (np.arange(n) + offset) % 10]


def write_cifar_dir(root: str, per_batch: int = 4) -> str:
  base = os.path.join(root, "cifar-10-batches-py")
  os.makedirs(base)
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  for k, name in enumerate(names):
    images, labels = cifar_rgb(per_batch, k * per_batch)
    data = images.transpose(0, 3, 1, 2).reshape(per_batch, 3072)
    with open(os.path.join(base, name), "wb") as f:
      pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
  return base


def png_bytes(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def write_aan_dir(root: str, rows: dict[str, list[str]] | None = None) -> str:
  folder = os.path.join(root, "lra_release", "tsv_data")
  os.makedirs(folder)
  if rows is None:
    rows = {}
    for split, n in (("train", 6), ("eval", 3), ("test", 3)):
      rows[split] = [
        f"{i % 2}.0\tid{i}a\tid{i}b\tdoc one {split} {i} \u00e9\tsecond {i}" for i in range(n)
      ]
  for split, lines in rows.items():
    with open(os.path.join(folder, f"new_aan_pairs.{split}.tsv"), "w") as f:
      f.write("".join(line + "\n" for line in lines))
  return folder


def tar_folder(folder: str, path: str) -> str:
  with tarfile.open(path, "w:gz") as tar:
    tar.add(folder, arcname=os.path.basename(folder))
  return path


@pytest.fixture(scope="module")
def listops_dir(tmp_path_factory):
  from lra.data import prepare_lib  # pylint: disable=g-import-not-at-top

  data_dir = str(tmp_path_factory.mktemp("listops"))
  prepare_lib.prepare("listops", data_dir, seed=0, num_train=40, num_val=12, num_test=12)
  return data_dir
