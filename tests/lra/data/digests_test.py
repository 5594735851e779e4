"""Digests of prepared data: written by `prepare`, damage found and named, `--overwrite` heals."""

import json
import logging
import os

import pytest

from lra.data import builders, digests, errors, pipeline, prepare_lib


def flip_middle_bytes(path: str, count: int = 8) -> None:
  """Inverts `count` bytes in the middle of the file at `path` (a damaged disk block)."""
  with open(path, "r+b") as f:
    size = os.path.getsize(path)
    f.seek(size // 2)
    chunk = f.read(count)
    f.seek(size // 2)
    f.write(bytes(b ^ 0xFF for b in chunk))


def _prepare(data_dir, **kw):
  prepare_lib.prepare("listops", data_dir, seed=3, num_train=8, num_val=2, num_test=2, **kw)
  return builders.version_dir("listops", data_dir)


def _shard(version_dir, split):
  return os.path.join(version_dir, f"lra_listops-{split}.array_record-00000-of-00001")


def _examples(data_dir):
  loader = pipeline.make_loader(
    "listops", "train", data_dir, batch_size=8, seed=0, shuffle=False, num_epochs=1
  )
  (batch,) = list(loader)
  return batch["inputs"].tolist(), batch["label"].tolist()


def test_prepare_records_every_stored_file_and_its_command(tmp_path):
  version_dir = _prepare(str(tmp_path))
  with open(os.path.join(version_dir, digests.DIGEST_FILE)) as f:
    record = json.load(f)
  assert set(record["sha256"]) == set(os.listdir(version_dir)) - {digests.DIGEST_FILE}
  shard = _shard(version_dir, "train")
  assert record["sha256"][os.path.basename(shard)] == digests.file_sha256(shard)
  assert record["command"] == (
    f"python -m lra.prepare --task=listops --data_dir={tmp_path} --seed=3 "
    "--num_train=8 --num_val=2 --num_test=2"
  )


def test_flipped_bytes_are_named_with_the_command_that_regenerates(tmp_path):
  version_dir = _prepare(str(tmp_path))
  shard = _shard(version_dir, "train")
  good = _examples(str(tmp_path))
  flip_middle_bytes(shard)
  expected = (
    f"{shard} does not match the sha256 recorded when it was prepared .*\n  "
    f"python -m lra.prepare --task=listops --data_dir={tmp_path} --seed=3 "
    "--num_train=8 --num_val=2 --num_test=2 --overwrite"
  )
  with pytest.raises(errors.DataCorruptError, match=expected):
    digests.verify(version_dir)
  with pytest.raises(errors.DataCorruptError, match=expected):
    _prepare(str(tmp_path))  # Finding existing data checks it.
  _prepare(str(tmp_path), overwrite=True)
  digests.verify(version_dir)
  # The same seed makes the same examples. (Not always the same bytes: protobuf may write
  # an example's features in another order in another process.)
  assert _examples(str(tmp_path)) == good


def test_a_missing_file_is_named(tmp_path):
  version_dir = _prepare(str(tmp_path))
  os.remove(_shard(version_dir, "test"))
  with pytest.raises(errors.DataCorruptError, match=r"-test\.array_record.* is missing"):
    digests.verify(version_dir)


def test_data_prepared_before_digests_gets_one_from_prepare(tmp_path, caplog):
  version_dir = _prepare(str(tmp_path))
  digest_path = os.path.join(version_dir, digests.DIGEST_FILE)
  with open(digest_path) as f:
    record = json.load(f)
  os.remove(digest_path)
  digests.verify(version_dir)  # Nothing to check against: no error.
  with caplog.at_level(logging.WARNING):
    _prepare(str(tmp_path))
  assert "prepared before digests were written" in caplog.text
  with open(digest_path) as f:
    assert json.load(f)["sha256"] == record["sha256"]
