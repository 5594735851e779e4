"""Tests of the Pathfinder generator and the official file layout."""

import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

from lra.data import pathfinder, pathfinder_files


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_images_are_deterministic_and_plausible(size):
  cfg = pathfinder.CONFIGS[size]
  image, label, margin = pathfinder.generate_image(cfg, seed=5, index=2)
  again, label2, _ = pathfinder.generate_image(cfg, seed=5, index=2)
  np.testing.assert_array_equal(image, again)
  assert label == label2 and label in (0, 1) and margin in cfg.paddle_margins
  assert image.shape == (size, size) and image.dtype == np.uint8
  assert image.max() == 255  # rescaled to the full range like the original imsave
  # Sparse curves on black: most pixels are background, but paddles cover a fair amount.
  lit = np.mean(image > 0)
  assert 0.01 < lit < 0.6
  other, _, _ = pathfinder.generate_image(cfg, seed=6, index=2)
  assert not np.array_equal(image, other)


def test_labels_are_balanced_and_markers_present():
  cfg = pathfinder.CONFIGS[32]
  labels = [pathfinder.generate_image(cfg, 0, i)[1] for i in range(40)]
  assert 10 <= sum(labels) <= 30


def test_target_snakes_have_contour_length_paddles():
  cfg = dataclasses.replace(pathfinder.CONFIGS[64], contour_length=6)
  rng = np.random.default_rng(0)
  for _ in range(50):
    canvas = pathfinder._Canvas(cfg, 1)
    try:
      a, b = pathfinder._targets(canvas, rng)
    except pathfinder._Restart:
      continue
    assert len(a.paddles) == len(b.paddles) == 6
    # Consecutive paddles never turn by more than the continuity limit (90deg / 1.8).
    for snake in (a, b):
      thetas = np.array([p[2] for p in snake.paddles])
      turns = np.abs((np.diff(thetas) + np.pi) % (2 * np.pi) - np.pi)
      assert np.all(turns < np.pi / 2 / cfg.continuity + 1e-6)
    # The two first tails are seed_distance apart.
    gap = np.linalg.norm(a.paddles[0][0] - b.paddles[0][0])
    assert abs(gap - cfg.seed_distance) < 1e-6
    return
  pytest.fail("no target pair in 50 attempts")


def test_bad_config():
  with pytest.raises(ValueError, match="paddle_thickness"):
    pathfinder.PathfinderConfig(32, paddle_thickness=0.3, antialias_scale=2)


def test_layout_is_independent_of_worker_count(tmp_path):
  cfg = pathfinder.CONFIGS[32]
  one, two = os.path.join(tmp_path, "one"), os.path.join(tmp_path, "two")
  pathfinder_files.generate(cfg, one, 7, seed=1, images_per_batch=3, num_workers=1)
  pathfinder_files.generate(cfg, two, 7, seed=1, images_per_batch=3, num_workers=2)
  items_one, skipped = pathfinder_files.read_index(one)
  items_two, _ = pathfinder_files.read_index(two)
  assert skipped == 0 and len(items_one) == 7
  assert sorted(os.listdir(os.path.join(one, "imgs"))) == ["0", "1", "2"]
  for (p1, l1), (p2, l2) in zip(items_one, items_two):
    assert l1 == l2 and os.path.relpath(p1, one) == os.path.relpath(p2, two)
    np.testing.assert_array_equal(
      pathfinder_files.load_png(p1, 32), pathfinder_files.load_png(p2, 32)
    )
  image, label, _ = pathfinder.generate_image(cfg, 1, 4)  # batch 1, sample 1
  np.testing.assert_array_equal(
    np.asarray(Image.open(os.path.join(one, "imgs", "1", "sample_1.png"))), image
  )
  assert items_one[4][1] == label


def _write_layout(root, lines, images):
  os.makedirs(os.path.join(root, "metadata"), exist_ok=True)
  os.makedirs(os.path.join(root, "imgs", "0"), exist_ok=True)
  for name, array in images.items():
    path = os.path.join(root, "imgs", "0", name)
    if array is None:
      open(path, "wb").close()
    elif isinstance(array, bytes):
      with open(path, "wb") as f:
        f.write(array)
    else:
      Image.fromarray(array, mode="L").save(path)
  with open(os.path.join(root, "metadata", "0.npy"), "w") as f:
    f.write("".join(f"{line}\n" for line in lines))


def test_reader_skips_empty_images_and_finds_nested_root(tmp_path):
  root = os.path.join(tmp_path, "pathfinder32", pathfinder_files.CONTOUR_DIR)
  img = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
  _write_layout(
    root,
    ["imgs/0 sample_0.png 0 1", "imgs/0 sample_1.png 1 0"],
    {"sample_0.png": img, "sample_1.png": None},
  )
  assert pathfinder_files.find_root(str(tmp_path), 32) == root
  items, skipped = pathfinder_files.read_index(root)
  assert skipped == 1 and [label for _, label in items] == [1]
  np.testing.assert_array_equal(pathfinder_files.load_png(items[0][0], 32), img)


@pytest.mark.parametrize(
  "lines,images,error,message",
  [
    (
      ["imgs/0 sample_0.png 0 2"],
      {"sample_0.png": np.zeros((32, 32), np.uint8)},
      ValueError,
      "0.npy:1: label 2",
    ),
    (["imgs/0 sample_0.png"], {}, ValueError, "0.npy:1: expected >= 4"),
    (["imgs/0 sample_9.png 9 1"], {}, FileNotFoundError, "sample_9.png"),
  ],
)
def test_bad_metadata_names_the_file(tmp_path, lines, images, error, message):
  _write_layout(str(tmp_path), lines, images)
  with pytest.raises(error, match=message):
    pathfinder_files.read_index(str(tmp_path))


def test_bad_png_names_the_file(tmp_path):
  _write_layout(
    str(tmp_path),
    ["imgs/0 a.png 0 1", "imgs/0 b.png 0 1"],
    {"a.png": b"\x89PNG\r\n\x1a\n truncated", "b.png": np.zeros((16, 16), np.uint8)},
  )
  with pytest.raises(ValueError, match="a.png: not a readable PNG"):
    pathfinder_files.load_png(os.path.join(tmp_path, "imgs", "0", "a.png"), 32)
  with pytest.raises(ValueError, match=r"b.png: image shape \(16, 16\)"):
    pathfinder_files.load_png(os.path.join(tmp_path, "imgs", "0", "b.png"), 32)


def test_interrupted_generation_resumes_missing_batches_only(tmp_path):
  cfg = pathfinder.CONFIGS[32]
  root = str(tmp_path)
  pathfinder_files.generate(cfg, root, 4, seed=0, images_per_batch=2, num_workers=1)
  kept = os.path.join(root, "imgs", "0", "sample_0.png")
  Image.fromarray(np.full((32, 32), 7, np.uint8)).save(kept)  # marks batch 0 as old
  redo = os.path.join(root, "imgs", "1", "sample_0.png")
  os.remove(redo)
  os.remove(os.path.join(root, "metadata", "1.npy"))  # batch 1 was interrupted
  pathfinder_files.generate(cfg, root, 4, seed=0, images_per_batch=2, num_workers=1)
  assert pathfinder_files.load_png(kept, 32).max() == 7
  np.testing.assert_array_equal(
    pathfinder_files.load_png(redo, 32), pathfinder.generate_image(cfg, 0, 2)[0]
  )
