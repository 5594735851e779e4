"""Tests of `prepare` for every task and source format, and of the entry point."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lra.data import (
  builders,
  errors,
  listops,
  pathfinder,
  pathfinder_files,
  pipeline,
  prepare_lib,
  sources,
)

from . import conftest as fx  # pylint: disable=relative-beyond-top-level
from . import digests_test  # pylint: disable=relative-beyond-top-level


def _all(task, split, data_dir, batch_size=2, **kwargs):
  loader = pipeline.make_loader(
    task,
    split,
    data_dir,
    batch_size=batch_size,
    seed=0,
    shuffle=False,
    num_epochs=1,
    drop_remainder=False,
    **kwargs,
  )
  batches = list(loader)
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_listops_generation_is_seeded_and_official_layout(tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  for d in (a, b):
    prepare_lib.prepare("listops", d, seed=7, num_train=6, num_val=2, num_test=2)
  for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
    with open(f"{a}/raw/listops-1000/{name}") as fa, open(f"{b}/raw/listops-1000/{name}") as fb:
      assert fa.read() == fb.read()
  assert prepare_lib.is_prepared("listops", a)
  expected = listops.generate(10, seed=7)
  rows = list(listops.read_tsv(f"{a}/raw/listops-1000/basic_val.tsv"))
  assert [label for _, label in rows] == [v for _, v in expected[6:8]]
  prepare_lib.prepare("listops", a, seed=7)  # already prepared: no-op
  assert pipeline.num_examples("listops", "train", a) == 6


def test_tilde_data_dir_is_the_home_folder(tmp_path, monkeypatch):
  # `--data_dir=~/lra_data` reaches us unexpanded: it must not become a folder named "~".
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  prepare_lib.prepare("listops", "~/lra_data", seed=0, num_train=2, num_val=1, num_test=1)
  assert prepare_lib.is_prepared("listops", str(tmp_path / "home" / "lra_data"))
  assert not (tmp_path / "~").exists()


def test_listops_from_official_tsvs(tmp_path):
  src = tmp_path / "lra_release" / "listops-1000"
  small = listops.ListOpsConfig(max_depth=4, max_args=4, min_length=5, max_length=64)
  examples = listops.generate(9, seed=0, cfg=small)
  for split, part in (
    ("train", examples[:5]),
    ("validation", examples[5:7]),
    ("test", examples[7:]),
  ):
    listops.write_tsv(str(src / listops.SPLIT_FILES[split]), part)
  out = str(tmp_path / "out")
  prepare_lib.prepare("listops", out, source=str(tmp_path), num_train=4)
  data = _all("listops", "train", out)
  assert data["label"].shape == (4,)
  expected = {(tuple(listops.encode(" ".join(t))), v) for t, v in examples[:5]}
  for row, mask, label in zip(data["inputs"], data["mask"], data["label"]):
    assert (tuple(row[mask]), label) in expected
  with pytest.raises(ValueError, match="holds 2 examples, 3 requested"):
    prepare_lib.prepare("listops", str(tmp_path / "o2"), source=str(src), num_val=3)


def test_listops_bad_source_is_not_half_written(tmp_path):
  src = tmp_path / "src"
  os.makedirs(src)
  for split, name in listops.SPLIT_FILES.items():
    with open(src / name, "w") as f:
      f.write("Source\tTarget\n[MIN 1 2 ]\t1\n" + ("[MAX 3 ]\t11\n" if split == "test" else ""))
  out = str(tmp_path / "out")
  with pytest.raises(ValueError, match=r"basic_test.tsv:3: label 11"):
    prepare_lib.prepare("listops", out, source=str(src))
  assert not prepare_lib.is_prepared("listops", out)
  with pytest.raises(errors.DataNotFoundError, match="basic_train.tsv"):
    prepare_lib.prepare("listops", out, source=str(tmp_path / "missing"))


def test_pathfinder_generated_split_and_pixel_masks(tmp_path):
  out = str(tmp_path)
  prepare_lib.prepare("pathfinder32", out, seed=1, num_train=6, num_val=2, num_test=2)
  raw = os.path.join(out, "raw", "pathfinder32", pathfinder_files.CONTOUR_DIR)
  assert os.path.isfile(os.path.join(raw, "imgs", "0", "sample_9.png"))
  data = _all("pathfinder32", "train", out)
  assert data["inputs"].shape == (6, 1024)
  assert data["mask"].all()  # black pixels are real tokens
  assert (data["inputs"] == 0).any() and data["inputs"].max() == 255
  legacy = _all("pathfinder32", "train", out, legacy_pixel_padding=True)
  np.testing.assert_array_equal(legacy["mask"], data["inputs"] != 0)
  # Every stored image is one the generator made for this seed.
  generated = {
    pathfinder.generate_image(pathfinder.CONFIGS[32], 1, i)[0].tobytes() for i in range(10)
  }
  for row in data["inputs"]:
    assert row.astype(np.uint8).tobytes() in generated
  # Raw images made with other settings are never mixed into a new dataset.
  os.remove(os.path.join(out, "lra_pathfinder32", "1.0.0", "dataset_info.json"))
  with pytest.raises(ValueError, match="other settings"):
    prepare_lib.prepare("pathfinder32", out, seed=2, num_train=6, num_val=2, num_test=2)


def test_pathfinder_from_release_layout_skips_empty(tmp_path):
  root = tmp_path / "lra_release" / "pathfinder32" / pathfinder_files.CONTOUR_DIR
  os.makedirs(root / "metadata")
  os.makedirs(root / "imgs" / "0")
  lines = []
  for i in range(11):
    path = root / "imgs" / "0" / f"sample_{i}.png"
    if i == 3:
      open(path, "wb").close()
    else:
      Image.fromarray(np.full((32, 32), i, np.uint8)).save(path)
    lines.append(f"imgs/0 sample_{i}.png {i} {i % 2} 1.0 14 4 2 0.5 1 1\n")
  with open(root / "metadata" / "0.npy", "w") as f:
    f.writelines(lines)
  out = str(tmp_path / "out")
  prepare_lib.prepare("pathfinder32", out, source=str(tmp_path))
  counts = [pipeline.num_examples("pathfinder32", s, out) for s in prepare_lib.tasks.SPLITS]
  assert counts == [8, 1, 1]
  values = set()
  for split in prepare_lib.tasks.SPLITS:
    data = _all("pathfinder32", split, out, batch_size=1)
    for row, label in zip(data["inputs"], data["label"]):
      assert np.all(row == row[0]) and label == row[0] % 2
      values.add(int(row[0]))
  assert values == set(range(11)) - {3}
  out2 = str(tmp_path / "out2")
  prepare_lib.prepare("pathfinder32", out2, source=str(root), num_train=5)
  counts = [pipeline.num_examples("pathfinder32", s, out2) for s in prepare_lib.tasks.SPLITS]
  assert counts == [5, 1, 1]
  with pytest.raises(ValueError, match="holds 10 images, 12 requested"):
    prepare_lib.prepare(
      "pathfinder32", str(tmp_path / "o3"), source=str(root), num_train=8, num_test=3
    )
  with pytest.raises(errors.DataNotFoundError, match="metadata"):
    prepare_lib.prepare("pathfinder64", str(tmp_path / "o4"), source=str(tmp_path))


@pytest.mark.parametrize("form", ["dir", "tar", "tfds_tfrecord", "tfds_array_record"])
def test_text_from_each_source_form(tmp_path, form):
  raw = fx.write_imdb_dir(str(tmp_path / "raw"))
  if form == "dir":
    source = str(tmp_path / "raw")
  elif form == "tar":
    source = fx.tar_folder(raw, str(tmp_path / "aclImdb_v1.tar.gz"))
  else:
    splits = {}
    for split in ("train", "test"):
      splits[split] = [
        {"text": t, "label": l} for t, l in sources.read_imdb(sources.Source("dir", raw), split)
      ]
    fx.write_tfds_dir(
      str(tmp_path / "tfds"),
      "imdb_reviews",
      "plain_text",
      "1.0.0",
      splits,
      file_format=form.split("_", 1)[1],
    )
    source = str(tmp_path / "tfds")
  out = str(tmp_path / "out")
  prepare_lib.prepare("text", out, source=source)
  data = _all("text", "train", out)
  assert data["inputs"].shape == (6, 4096) and sorted(data["label"]) == [0, 0, 0, 1, 1, 1]
  texts = {
    bytes((row[mask] - 1).astype(np.uint8)) for row, mask in zip(data["inputs"], data["mask"])
  }
  assert fx.IMDB_TEXT.format(i=2, split="train", label="pos").encode() in texts
  assert pipeline.num_examples("text", "validation", out) == 6  # validation reads test
  assert data["inputs"].max() <= 256


def test_text_missing_says_what_to_download(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "none"))
  monkeypatch.setenv("HOME", str(tmp_path))
  with pytest.raises(errors.DataNotFoundError) as info:
    prepare_lib.prepare("text", str(tmp_path))
  message = str(info.value)
  assert errors.IMDB_URL in message
  assert os.path.join(str(tmp_path), "downloads", "aclImdb_v1.tar.gz") in message


def test_truncated_archive_names_the_file(tmp_path):
  raw = fx.write_imdb_dir(str(tmp_path / "raw"), per_class=40)
  tar = fx.tar_folder(raw, str(tmp_path / "aclImdb_v1.tar.gz"))
  with open(tar, "rb") as f:
    data = f.read()
  with open(tar, "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(ValueError, match="aclImdb_v1.tar.gz: corrupt or truncated"):
    prepare_lib.prepare("text", str(tmp_path / "out"), source=tar)


@pytest.mark.parametrize("form", ["dir", "tar", "tfds"])
def test_image_grayscale_splits(tmp_path, form):
  raw = fx.write_cifar_dir(str(tmp_path / "raw"))
  if form == "dir":
    source = raw
  elif form == "tar":
    source = fx.tar_folder(raw, str(tmp_path / "cifar-10-python.tar.gz"))
  else:
    splits = {"train": [], "test": []}
    for k in range(6):
      images, labels = fx.cifar_rgb(4, k * 4)
      splits["train" if k < 5 else "test"] += [
        {"image": fx.png_bytes(im), "label": l} for im, l in zip(images, labels)
      ]
    fx.write_tfds_dir(str(tmp_path / "tfds"), "cifar10", None, "3.0.2", splits)
    source = str(tmp_path / "tfds")
  out = str(tmp_path / "out")
  prepare_lib.prepare("image", out, source=source)
  counts = [pipeline.num_examples("image", s, out) for s in prepare_lib.tasks.SPLITS]
  assert counts == [18, 2, 4]
  val = _all("image", "validation", out, batch_size=1)
  images, labels = fx.cifar_rgb(4, 16)  # data_batch_5 holds examples 16..19
  rgb = images[2:].astype(np.float64) / 255
  gray = np.floor((rgb @ [0.2989, 0.5870, 0.1140]) * 255.5)
  np.testing.assert_allclose(val["inputs"], gray.reshape(2, 1024), atol=1)
  np.testing.assert_array_equal(val["label"], labels[2:])
  assert val["mask"].all() and val["inputs"][:, 0].tolist() == [0, 0]


def test_image_bad_label_names_the_file(tmp_path):
  raw = fx.write_cifar_dir(str(tmp_path / "raw"))
  with open(os.path.join(raw, "test_batch"), "rb") as f:
    batch = pickle.load(f, encoding="bytes")
  batch[b"labels"][1] = 12
  with open(os.path.join(raw, "test_batch"), "wb") as f:
    pickle.dump(batch, f)
  with pytest.raises(ValueError, match="test_batch: label 12"):
    prepare_lib.prepare("image", str(tmp_path / "out"), source=raw)
  os.remove(os.path.join(raw, "data_batch_3"))
  with pytest.raises(ValueError, match="data_batch_3"):
    prepare_lib.prepare("image", str(tmp_path / "out"), source=raw)


def test_retrieval_pairs(tmp_path):
  fx.write_aan_dir(str(tmp_path))
  out = str(tmp_path / "out")
  prepare_lib.prepare("retrieval", out, source=str(tmp_path))
  data = _all("retrieval", "train", out, max_length=32)
  assert data["inputs"].shape == (6, 2, 32) and data["mask"].shape == (6, 2, 32)
  assert sorted(data["label"]) == [0, 0, 0, 1, 1, 1]
  docs = {
    bytes((row[m] - 1).astype(np.uint8)) for row, m in zip(data["inputs"][:, 1], data["mask"][:, 1])
  }
  assert b"second 4" in docs
  first = bytes((data["inputs"][0, 0][data["mask"][0, 0]] - 1).astype(np.uint8))
  assert first.startswith(b"doc one train") and len(first) == len("doc one train 0 é".encode())
  assert pipeline.num_examples("retrieval", "validation", out) == 3


@pytest.mark.parametrize(
  "line,message",
  [
    ("3\ta\tb\tx\ty", "label 3"),
    ("1\ta\tb\tx", "expected 5"),
  ],
)
def test_retrieval_bad_rows_name_file_and_line(tmp_path, line, message):
  fx.write_aan_dir(
    str(tmp_path),
    {"train": ["1\ta\tb\tx\ty", line], "eval": ["0\ta\tb\tx\ty"], "test": ["0\ta\tb\tx\ty"]},
  )
  with pytest.raises(ValueError, match=f"new_aan_pairs.train.tsv:2: {message}"):
    prepare_lib.prepare("retrieval", str(tmp_path / "out"), source=str(tmp_path))


def test_missing_split_names_the_file(tmp_path):
  folder = fx.write_aan_dir(str(tmp_path))
  os.remove(os.path.join(folder, "new_aan_pairs.eval.tsv"))
  with pytest.raises(ValueError, match="new_aan_pairs.eval.tsv: missing split file"):
    prepare_lib.prepare("retrieval", str(tmp_path / "out"), source=folder)
  fx.write_tfds_dir(
    str(tmp_path / "tfds"),
    "imdb_reviews",
    "plain_text",
    "1.0.0",
    {"train": [{"text": b"a", "label": 1}]},
  )
  with pytest.raises(ValueError, match="dataset_info.json: no split 'test'"):
    prepare_lib.prepare("text", str(tmp_path / "out"), source=str(tmp_path / "tfds"))


def test_retrieval_missing_names_release(tmp_path):
  with pytest.raises(errors.DataNotFoundError, match="lra_release.gz"):
    prepare_lib.prepare("retrieval", str(tmp_path))


def test_tfrecord_corruption_is_detected(tmp_path):
  folder = fx.write_tfds_dir(
    str(tmp_path),
    "imdb_reviews",
    "plain_text",
    "1.0.0",
    {"train": [{"text": b"a", "label": 1}] * 3, "test": [{"text": b"b", "label": 0}]},
  )
  shard = os.path.join(folder, "imdb_reviews-train.tfrecord-00000-of-00001")
  with open(shard, "rb") as f:
    data = f.read()
  with open(shard, "wb") as f:
    f.write(data[:-3])
  with pytest.raises(ValueError, match="truncated TFRecord"):
    prepare_lib.prepare("text", str(tmp_path / "out"), source=str(tmp_path))


def test_bad_prepare_arguments(tmp_path):
  with pytest.raises(ValueError, match="num_train=0"):
    prepare_lib.prepare("listops", str(tmp_path), num_train=0)
  with pytest.raises(ValueError, match="task='cifar'"):
    prepare_lib.prepare("cifar", str(tmp_path))


@pytest.mark.slow  # a subprocess; the preparation itself is tested above
def test_entry_point(tmp_path):
  # A subprocess: importing the absl entry point here would define its flags in the test
  # process, next to other entry points' flags.
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  cmd = [
    sys.executable,
    "-m",
    "lra.prepare",
    "--task=listops",
    f"--data_dir={tmp_path}",
    "--seed=2",
    "--num_train=3",
    "--num_val=1",
    "--num_test=1",
  ]
  done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert pipeline.num_examples("listops", "test", str(tmp_path)) == 1
  assert "listops train: 3 examples" in done.stderr
  bad = subprocess.run(cmd[:3], cwd=root, capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and "--task and --data_dir are required" in bad.stderr
  # Damaged data: one message naming the file and the command that regenerates it.
  shard = os.path.join(
    builders.version_dir("listops", str(tmp_path)), "lra_listops-train.array_record-00000-of-00001"
  )
  digests_test.flip_middle_bytes(shard)
  damaged = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)
  assert damaged.returncode != 0 and "Traceback" not in damaged.stderr
  assert f"DataCorruptError: {shard} does not match" in damaged.stderr
  assert " ".join(["python", *cmd[1:], "--overwrite"]) in damaged.stderr


def test_stored_examples_are_written_with_sorted_feature_keys():
  """TFDS writes a tf.train.Example's feature map in the protobuf runtime's hash order,
  which differs between processes (same examples, other bytes, other digests)."""
  from tensorflow_datasets.core import example_serializer  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top

  from lra.data import builders, tasks  # pylint: disable=g-import-not-at-top

  spec = tasks.get_task("listops").features().get_serialized_info()
  original = example_serializer.ExampleSerializer.serialize_example
  with builders.deterministic_serialization():
    serializer = example_serializer.ExampleSerializer(spec)
    raw = serializer.serialize_example({"tokens": np.array([11, 2, 15], np.uint8), "label": 1})
  assert example_serializer.ExampleSerializer.serialize_example is original
  parsed = tf_example_pb2.Example.FromString(raw)
  assert raw == parsed.SerializeToString(deterministic=True)
  assert raw.index(b"label") < raw.index(b"tokens")
