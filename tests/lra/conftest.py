"""Fixtures of the harness tests: tiny data for every task, in tmp dirs."""

import os
import pickle

import numpy as np
import pytest

# Every tiny dataset: (train, validation, test) sizes.
SIZES = (48, 16, 16)


def _write_imdb(root):
  for split in ("train", "test"):
    for label in ("neg", "pos"):
      folder = os.path.join(root, "downloads", "aclImdb", split, label)
      os.makedirs(folder)
      for i in range(SIZES[0] // 2):
        with open(os.path.join(folder, f"{i}_7.txt"), "w") as f:
          f.write(f"{label} review {i} " * (3 + i % 5))


def _write_cifar(root):
  base = os.path.join(root, "downloads", "cifar-10-batches-py")
  os.makedirs(base)
  rng = np.random.default_rng(0)
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    n = 16
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    with open(os.path.join(base, name), "wb") as f:
      pickle.dump(
        {b"data": data, b"labels": [i % 10 for i in range(n)], b"batch_label": name.encode()}, f
      )


def _write_aan(root):
  folder = os.path.join(root, "downloads", "tsv_data")
  os.makedirs(folder)
  for split, n in (("train", SIZES[0]), ("eval", SIZES[1]), ("test", SIZES[2])):
    with open(os.path.join(folder, f"new_aan_pairs.{split}.tsv"), "w") as f:
      for i in range(n):
        f.write(f"{i % 2}.0\tid{i}a\tid{i}b\tpaper {i} about {split}\tcited text {i % 3}\n")


def _prepare_tiny(task: str, data_dir: str) -> None:
  from lra.data import prepare_lib  # pylint: disable=g-import-not-at-top

  if task in ("text", "retrieval"):
    prepare_lib.prepare(task, data_dir)
  elif task == "image":
    prepare_lib.prepare(task, data_dir, num_train=48, num_val=8, num_test=16)
  else:
    prepare_lib.prepare(task, data_dir, num_train=SIZES[0], num_val=SIZES[1], num_test=SIZES[2])


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
  """prepared(task) -> a data dir holding tiny data of `task` (prepared on first use).

  Every task has 16 test examples; text validates on its test split (48 examples).
  """
  root = str(tmp_path_factory.mktemp("lra_data"))
  _write_imdb(root)
  _write_cifar(root)
  _write_aan(root)
  done = set()

  def get(task):
    if task not in done:
      _prepare_tiny(task, root)
      done.add(task)
    return root

  return get


@pytest.fixture(scope="session")
def lm_data(tmp_path_factory):
  """A data dir with the 32-byte windows of a tiny text corpus (tests/lra/lm_testing.py)."""
  from lra.data import prepare_lib  # pylint: disable=g-import-not-at-top

  from . import lm_testing  # pylint: disable=g-import-not-at-top,relative-beyond-top-level

  root = tmp_path_factory.mktemp("lm")
  source = lm_testing.write_corpus(str(root / "corpus"))
  prepare_lib.prepare("lm", str(root / "data"), source=source, max_tokens=32, progress=False)
  return str(root / "data")


@pytest.fixture(scope="session")
def lm_run(lm_data, tmp_path_factory):
  """(workdir, results) of a finished tiny LM run (`lm_testing.run_config_of`)."""
  from lra import run_config, train  # pylint: disable=g-import-not-at-top

  from . import lm_testing  # pylint: disable=g-import-not-at-top,relative-beyond-top-level

  workdir = tmp_path_factory.mktemp("lm_run")
  run = run_config.from_config_dict(lm_testing.run_config_of(lm_data))
  return workdir, train.train_and_evaluate(run, str(workdir))
