"""Pathfinder files in the official release layout, written in parallel and read back.

Layout (one folder per difficulty, e.g. `pathfinder32/curv_contour_length_14/`):
  imgs/<batch>/sample_<i>.png   8-bit grayscale PNGs
  metadata/<batch>.npy          despite the suffix, text: one line per image,
                                `imgs/<batch> sample_<i>.png <i> <label> ...` (space separated)
"""

import dataclasses
import io
import logging
import multiprocessing
import os
import time

import numpy as np
from PIL import Image

from lra.data import pathfinder

CONTOUR_DIR = "curv_contour_length_14"


@dataclasses.dataclass(frozen=True)
class _Batch:
  cfg: pathfinder.PathfinderConfig
  root: str
  seed: int
  batch_id: int
  first_index: int
  count: int


def _metadata_path(root: str, batch_id: int) -> str:
  return os.path.join(root, "metadata", f"{batch_id}.npy")


def _write_batch(batch: _Batch) -> int:
  """Generates and writes one batch folder; the metadata file is written last."""
  cfg = batch.cfg
  sub = f"imgs/{batch.batch_id}"
  os.makedirs(os.path.join(batch.root, sub), exist_ok=True)
  lines = []
  for i in range(batch.count):
    image, label, margin = pathfinder.generate_image(cfg, batch.seed, batch.first_index + i)
    name = f"sample_{i}.png"
    Image.fromarray(image, mode="L").save(os.path.join(batch.root, sub, name))
    # Same columns as PF-gen's accumulate_meta.
    lines.append(
      f"{sub} {name} {i} {label} {cfg.continuity} {cfg.contour_length} "
      f"{cfg.distractor_length} {cfg.paddle_length} {cfg.paddle_thickness} "
      f"{margin} 1\n"
    )
  path = _metadata_path(batch.root, batch.batch_id)
  with open(path + ".tmp", "w") as f:
    f.writelines(lines)
  os.replace(path + ".tmp", path)
  return batch.count


def generate(
  cfg: pathfinder.PathfinderConfig,
  root: str,
  num_images: int,
  seed: int,
  *,
  images_per_batch: int = 1000,
  num_workers: int | None = None,
) -> float:
  """Writes `num_images` images under `root` in the official layout.

  Image k is `pathfinder.generate_image(cfg, seed, k)` whatever the number of workers.
  Batches whose metadata file exists are kept, so an interrupted run resumes.

  Returns:
    Seconds spent.
  """
  if num_images < 1:
    raise ValueError(f"{num_images=} must be >= 1")
  if images_per_batch < 1:
    raise ValueError(f"{images_per_batch=} must be >= 1")
  os.makedirs(os.path.join(root, "metadata"), exist_ok=True)
  batches = []
  for batch_id, first in enumerate(range(0, num_images, images_per_batch)):
    count = min(images_per_batch, num_images - first)
    if not os.path.exists(_metadata_path(root, batch_id)):
      batches.append(_Batch(cfg, root, seed, batch_id, first, count))
  num_workers = num_workers or os.cpu_count() or 1
  start = time.time()
  if num_workers == 1 or len(batches) <= 1:
    for b in batches:
      _write_batch(b)
  else:
    todo, done = sum(b.count for b in batches), 0
    # spawn, not fork: the caller may hold JAX's threads.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(num_workers, len(batches))) as pool:
      for count in pool.imap_unordered(_write_batch, batches):
        done += count
        logging.info(
          "pathfinder: %d/%d new images, %.1f images/s",
          done,
          todo,
          done / max(time.time() - start, 1e-9),
        )
  return time.time() - start


def find_root(path: str, image_size: int) -> str:
  """The folder holding `metadata/` for `path` given as it or any parent in the release."""
  candidates = [
    path,
    os.path.join(path, CONTOUR_DIR),
    os.path.join(path, f"pathfinder{image_size}", CONTOUR_DIR),
    os.path.join(path, "lra_release", f"pathfinder{image_size}", CONTOUR_DIR),
  ]
  for c in candidates:
    if os.path.isdir(os.path.join(c, "metadata")):
      return c
  raise FileNotFoundError(
    f"No Pathfinder layout under {path!r}: looked for a metadata/ folder in {candidates}"
  )


def read_index(root: str) -> tuple[list[tuple[str, int]], int]:
  """Lists (png path, label) of every non-empty image named by `root/metadata/*`.

  Returns:
    (items sorted by batch and sample, number of empty PNGs skipped).

  Raises:
    ValueError: a malformed metadata line or a label outside {0, 1} (names file and line).
    FileNotFoundError: a PNG named by the metadata is missing.
  """
  meta_dir = os.path.join(root, "metadata")
  names = [n for n in os.listdir(meta_dir) if not n.endswith(".tmp")]
  if not names:
    raise ValueError(f"{meta_dir}: no metadata files")

  def batch_key(name):
    stem = name.split(".")[0]
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)

  items, skipped = [], 0
  for name in sorted(names, key=batch_key):
    path = os.path.join(meta_dir, name)
    with open(path, "rb") as f:
      raw = f.read()
    if raw.startswith(b"\x93NUMPY"):
      raise ValueError(
        f"{path}: binary .npy metadata; expected the text lines of the "
        "LRA release (convert with numpy: one row per line, space separated)"
      )
    for line_no, line in enumerate(raw.decode("utf-8", "replace").splitlines(), start=1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) < 4:
        raise ValueError(f"{path}:{line_no}: expected >= 4 space-separated fields, got {line!r}")
      try:
        label = int(float(fields[3]))
      except ValueError as e:
        raise ValueError(f"{path}:{line_no}: label {fields[3]!r} is not a number") from e
      if label not in (0, 1):
        raise ValueError(f"{path}:{line_no}: label {label} outside {{0, 1}}")
      png = os.path.join(root, fields[0], fields[1])
      try:
        size = os.path.getsize(png)
      except OSError as e:
        raise FileNotFoundError(f"{png} (named in {path}:{line_no}) is missing") from e
      if size == 0:  # The release has empty files, e.g. curv_baseline/imgs/0/sample_172.png.
        skipped += 1
        continue
      items.append((png, label))
  if not items:
    raise ValueError(f"{root}: the metadata names no non-empty image")
  return items, skipped


def load_png(path: str, image_size: int) -> np.ndarray:
  """Decodes a grayscale PNG to uint8 [image_size, image_size]; ValueError naming `path`."""
  try:
    with open(path, "rb") as f:
      data = f.read()
    with Image.open(io.BytesIO(data)) as img:
      img.load()
      if img.mode != "L":
        img = img.convert("L")
      array = np.asarray(img, dtype=np.uint8)
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f"{path}: not a readable PNG ({e})") from e
  if array.shape != (image_size, image_size):
    raise ValueError(f"{path}: image shape {array.shape}, expected {(image_size, image_size)}")
  return array
