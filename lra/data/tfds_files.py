"""Reads datasets that `tfds build` prepared elsewhere, without TensorFlow.

A prepared TFDS dataset is `<data_dir>/<name>/[<config>/]<version>/` with
`dataset_info.json` and shards `<name>-<split>.<tfrecord|array_record>-NNNNN-of-NNNNN`
holding serialized `tf.train.Example` protos (TFDS ships the proto without TensorFlow).
TFRecord framing: uint64 length, uint32 masked CRC32C of the length, data, uint32 CRC of the
data. The length CRC is checked (a cheap guard against a corrupt or non-TFRecord file); the
data CRC is not (pure-Python CRC32C would dominate the conversion time).
"""

import glob
import json
import os
import struct
from collections.abc import Iterator

from tensorflow_datasets.proto import tf_example_pb2


def _crc32c_table() -> list[int]:
  table = []
  for i in range(256):
    crc = i
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def write_tfrecord(path: str, records: list[bytes]) -> None:
  """Writes TFRecord framing (for test fixtures and interoperability)."""
  with open(path, "wb") as f:
    for rec in records:
      header = struct.pack("<Q", len(rec))
      f.write(header + struct.pack("<I", masked_crc32c(header)))
      f.write(rec + struct.pack("<I", masked_crc32c(rec)))


def read_tfrecord(path: str) -> Iterator[bytes]:
  """Yields records; ValueError naming `path` on a bad length CRC or a truncated record."""
  with open(path, "rb") as f:
    index = 0
    while True:
      header = f.read(12)
      if not header:
        return
      if len(header) < 12:
        raise ValueError(f"{path}: truncated TFRecord header at record {index}")
      length, crc = struct.unpack("<QI", header)
      if masked_crc32c(header[:8]) != crc:
        raise ValueError(f"{path}: corrupt TFRecord (bad length CRC at record {index})")
      data = f.read(length + 4)
      if len(data) < length + 4:
        raise ValueError(f"{path}: truncated TFRecord at record {index}")
      yield data[:length]
      index += 1


def find_version_dir(root: str, name: str, config: str | None = None) -> str | None:
  """The newest prepared `<root>/<name>/[<config>/]<version>` or `root` itself; else None."""
  if os.path.isfile(os.path.join(root, "dataset_info.json")):
    return root
  base = os.path.join(root, name, config) if config else os.path.join(root, name)
  if not os.path.isdir(base):
    return None
  versions = [
    v for v in os.listdir(base) if os.path.isfile(os.path.join(base, v, "dataset_info.json"))
  ]
  if not versions:
    return None
  newest = max(versions, key=lambda v: tuple(int(p) if p.isdigit() else -1 for p in v.split(".")))
  return os.path.join(base, newest)


def read_split(version_dir: str, split: str) -> Iterator[tf_example_pb2.Example]:
  """Yields the examples of `split` in file order, checking the count against the info.

  Raises:
    ValueError: missing split, missing shards, or a record count that differs from
      `dataset_info.json` (names the directory).
  """
  info_path = os.path.join(version_dir, "dataset_info.json")
  with open(info_path) as f:
    info = json.load(f)
  name = info.get("name") or os.path.basename(os.path.dirname(version_dir))
  fmt = info.get("fileFormat", "tfrecord")
  split_info = {s["name"]: s for s in info.get("splits", [])}
  if split not in split_info:
    raise ValueError(f"{info_path}: no split {split!r}; has {sorted(split_info)}")
  expected = sum(int(n) for n in split_info[split].get("shardLengths", []))
  shards = sorted(glob.glob(os.path.join(version_dir, f"{name}-{split}.{fmt}-*")))
  if not shards:
    raise ValueError(f"{version_dir}: no {fmt} shards for split {split!r}")
  count = 0
  for shard in shards:
    if fmt == "array_record":
      from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

      reader = array_record_module.ArrayRecordReader(shard)
      records = reader.read_all()
      reader.close()
    else:
      records = read_tfrecord(shard)
    for raw in records:
      try:
        example = tf_example_pb2.Example.FromString(raw)
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f"{shard}: record {count} is not a tf.train.Example ({e})") from e
      count += 1
      yield example
  if expected and count != expected:
    raise ValueError(
      f"{version_dir}: split {split!r} has {count} records, dataset_info.json says {expected}"
    )


def bytes_feature(example, key: str, where: str) -> bytes:
  values = example.features.feature[key].bytes_list.value
  if len(values) != 1:
    raise ValueError(f"{where}: feature {key!r} missing or not a single bytes value")
  return values[0]


def int_feature(example, key: str, where: str) -> int:
  values = example.features.feature[key].int64_list.value
  if len(values) != 1:
    raise ValueError(f"{where}: feature {key!r} missing or not a single int64 value")
  return int(values[0])
