"""Tests of the grain loader: shapes, masks, determinism, resumption, sharding."""

import json
import sys

import numpy as np
import pytest

from lra.data import listops, pipeline, prepare_lib, tasks


def _batches(loader, n=None):
  out = []
  for i, batch in enumerate(loader):
    if n is not None and i >= n:
      break
    out.append(batch)
  return out


def _take(loader, n):
  """The next `n` batches of a new pass (no batch beyond them is taken)."""
  it = iter(loader)
  return [next(it) for _ in range(n)]


def test_task_specs():
  assert tasks.get_task("pathfinder128").max_length == 128 * 128
  assert tasks.get_task("retrieval").dual_input
  assert tasks.get_task("image").image_shape == (32, 32)
  with pytest.raises(ValueError, match="'nope'.*listops"):
    tasks.get_task("nope")


def test_each_task_says_how_its_examples_become_ids():
  u8 = lambda *x: np.array(x, np.uint8)
  listops_ids = tasks.get_task("listops").token_ids({"tokens": u8(11, 3, 15)})
  np.testing.assert_array_equal(listops_ids, [[11, 3, 15]])  # The vocabulary's ids.
  text = tasks.get_task("text")
  np.testing.assert_array_equal(text.token_ids({"tokens": u8(0, 255)}), [[1, 256]])  # Byte + 1.
  assert text.vocab_size == 257
  pair = tasks.get_task("retrieval").token_ids({"tokens1": u8(7), "tokens2": u8(0, 1)})
  assert [p.tolist() for p in pair] == [[8], [1, 2]]
  image = {"image": np.arange(1024, dtype=np.uint32).reshape(32, 32).astype(np.uint8)}
  (pixels,) = tasks.get_task("pathfinder32").token_ids(image)
  np.testing.assert_array_equal(pixels, np.arange(1024) % 256)  # Row-major pixel values.
  assert pixels.dtype == np.int32
  # Text has no validation split: it reads test. The other tasks store all three.
  assert text.stored_splits == ("train", "test") and text.stored_split("validation") == "test"
  assert tasks.get_task("image").stored_split("validation") == "validation"
  assert [n for n, t in tasks.TASKS.items() if t.can_generate] == [
    "listops",
    "pathfinder32",
    "pathfinder64",
    "pathfinder128",
    "pathfinder256",
    "lm",
  ]
  features = tasks.get_task("retrieval").features()
  assert set(features.keys()) == {"tokens1", "tokens2", "label"}
  assert tasks.get_task("pathfinder64").features()["image"].shape == (64, 64)
  with pytest.raises(ValueError, match="max_tokens applies to listops only"):
    tasks.get_task("image").split_examples(
      "/nowhere", source=None, seed=0, counts=(1, 1, 1), max_tokens=5
    )


def test_batch_layout_and_mask(listops_dir):
  loader = pipeline.make_loader(
    "listops", "train", listops_dir, batch_size=8, seed=0, shuffle=False, num_epochs=1
  )
  assert len(loader) == 5 and pipeline.num_examples("listops", "train", listops_dir) == 40
  batches = _batches(loader)
  assert len(batches) == 5
  b = batches[0]
  assert b["inputs"].shape == (8, 2048) and b["inputs"].dtype == np.int32
  assert b["mask"].dtype == bool and b["label"].dtype == np.int32
  lengths = b["mask"].sum(axis=1)
  assert np.all(lengths > 500) and np.all(lengths < 2000)
  for row, mask in zip(b["inputs"], b["mask"]):
    assert np.all(row[mask] > 0) and np.all(row[~mask] == 0)
    assert np.all(mask[: mask.sum()])  # padding only at the end
    assert row[0] in [listops.TOKEN_TO_ID["[" + op] for op in listops.OPERATORS]
  assert set(np.concatenate([x["label"] for x in batches])) <= set(range(10))
  # The stored ids are those of the TSV written next to them.
  tsv = list(listops.read_tsv(f"{listops_dir}/raw/listops-1000/basic_train.tsv"))
  stored = {tuple(ids) for ids, _ in tsv}
  for row, mask in zip(b["inputs"], b["mask"]):
    assert tuple(row[mask]) in stored


def test_legacy_padding_changes_nothing_for_token_tasks(listops_dir):
  make = lambda legacy: _batches(
    pipeline.make_loader(
      "listops",
      "test",
      listops_dir,
      batch_size=4,
      seed=0,
      shuffle=False,
      num_epochs=1,
      legacy_pixel_padding=legacy,
    )
  )[0]
  np.testing.assert_array_equal(make(True)["mask"], make(False)["mask"])


def test_max_length_truncates_and_pads(listops_dir):
  short = _batches(
    pipeline.make_loader(
      "listops",
      "test",
      listops_dir,
      batch_size=4,
      seed=0,
      shuffle=False,
      num_epochs=1,
      max_length=64,
    )
  )[0]
  long = _batches(
    pipeline.make_loader(
      "listops",
      "test",
      listops_dir,
      batch_size=4,
      seed=0,
      shuffle=False,
      num_epochs=1,
      max_length=2500,
    )
  )[0]
  assert short["inputs"].shape == (4, 64) and short["mask"].all()
  np.testing.assert_array_equal(long["inputs"][:, :64], short["inputs"])
  assert not long["mask"][:, 2000:].any()


def test_same_seed_same_batches_and_epochs_reshuffle(listops_dir):
  make = lambda seed: pipeline.make_loader(
    "listops", "train", listops_dir, batch_size=8, seed=seed, shuffle=True, num_epochs=2
  )
  a, b, c = _batches(make(1)), _batches(make(1)), _batches(make(2))
  assert len(a) == 10
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["inputs"], y["inputs"])
  assert any(not np.array_equal(x["inputs"], z["inputs"]) for x, z in zip(a, c))
  first = np.concatenate([x["label"] for x in a[:5]])
  second = np.concatenate([x["label"] for x in a[5:]])
  assert sorted(first) == sorted(second)  # each epoch sees every example once


def test_resume_mid_epoch_is_exact(listops_dir):
  make = lambda: pipeline.make_loader(
    "listops", "train", listops_dir, batch_size=4, seed=3, shuffle=True, num_epochs=None
  )
  reference = _batches(make(), 16)
  loader = make()
  it = iter(loader)
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(loader.get_state()))  # must survive a JSON round trip
  resumed = make()
  resumed.set_state(state)
  rest = _batches(resumed, 9)
  for x, y in zip(reference[7:], rest):
    np.testing.assert_array_equal(x["inputs"], y["inputs"])
    np.testing.assert_array_equal(x["label"], y["label"])


def test_worker_processes_give_the_same_batches_and_states(listops_dir):
  """Two reader processes give the in-process loader's batches (across an epoch boundary,
  on shard 1 of 2), and each loader resumes from the other's state."""
  make = lambda workers: pipeline.make_loader(
    "listops",
    "train",
    listops_dir,
    batch_size=3,
    seed=5,
    shuffle=True,
    shard_index=1,
    num_shards=2,
    workers=workers,
  )
  expected = _take(make(0), 17)  # 6 batches per epoch of this shard.
  parallel = make(2)
  try:
    got = _take(parallel, 14)
    for x, y in zip(expected, got):
      for key in x:
        np.testing.assert_array_equal(x[key], y[key])
        assert x[key].dtype == y[key].dtype
    in_process = make(0)
    in_process.set_state(json.loads(json.dumps(parallel.get_state())))
    for x, y in zip(expected[14:], _take(in_process, 3), strict=True):
      np.testing.assert_array_equal(x["inputs"], y["inputs"])
    in_process = make(0)
    _take(in_process, 5)
    parallel.set_state(json.loads(json.dumps(in_process.get_state())))
    for x, y in zip(expected[5:8], _take(parallel, 3), strict=True):
      np.testing.assert_array_equal(x["inputs"], y["inputs"])
  finally:
    parallel.close()


def test_shards_are_disjoint_and_cover(listops_dir):
  seen = []
  for shard in range(4):
    loader = pipeline.make_loader(
      "listops",
      "validation",
      listops_dir,
      batch_size=3,
      seed=0,
      shuffle=True,
      num_epochs=1,
      shard_index=shard,
      num_shards=4,
    )
    assert len(loader) == 1
    seen.extend(tuple(r) for b in _batches(loader) for r in b["inputs"])
  assert len(seen) == len(set(seen)) == 12


def test_remainder_kept_when_asked(listops_dir):
  loader = pipeline.make_loader(
    "listops",
    "test",
    listops_dir,
    batch_size=5,
    seed=0,
    shuffle=False,
    num_epochs=1,
    drop_remainder=False,
  )
  sizes = [b["label"].shape[0] for b in _batches(loader)]
  assert len(loader) == 3 and sizes == [5, 5, 2]


@pytest.mark.parametrize(
  "kwargs,message",
  [
    ({"batch_size": 0}, "batch_size=0"),
    ({"max_length": 0}, "max_length=0"),
    ({"num_epochs": 0}, "num_epochs=0"),
    ({"shard_index": 2, "num_shards": 2}, "shard_index=2"),
    ({"batch_size": 64}, "too few"),
  ],
)
def test_bad_arguments(listops_dir, kwargs, message):
  args = dict(batch_size=4, seed=0, shuffle=False)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    pipeline.make_loader("listops", "test", listops_dir, **args)
  with pytest.raises(ValueError, match="split='dev'"):
    pipeline.make_loader("listops", "dev", listops_dir, batch_size=4, seed=0, shuffle=False)


def test_unprepared_data_names_the_command(tmp_path):
  with pytest.raises(
    pipeline.DataNotFoundError, match=f"python -m lra.prepare --task=image --data_dir={tmp_path}"
  ):
    pipeline.make_loader("image", "train", str(tmp_path), batch_size=2, seed=0, shuffle=True)
  assert not prepare_lib.is_prepared("image", str(tmp_path))


def test_tensorflow_is_never_imported(listops_dir):
  _batches(
    pipeline.make_loader(
      "listops", "test", listops_dir, batch_size=4, seed=0, shuffle=True, num_epochs=1
    )
  )
  assert "tensorflow" not in sys.modules
