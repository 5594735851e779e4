"""Pathfinder / Path-X: a seeded re-implementation of the Kim, Linsley et al. generator.

An image holds two target snakes (dashed curves of short "paddles"), a few shorter
distractor snakes and two disc markers. Label 1: both markers sit on the ends of the same
target snake; label 0: one marker on each target snake. The first paddles of the two target
snakes start `seed_distance` apart, so the origin marker's neighbourhood looks alike in both
classes. Geometry follows the original PF-gen code (its parameters per image size are in
`CONFIGS`); each image draws its randomness from
`np.random.default_rng([seed, index])`, so the output does not depend on how the work is
split over processes.
"""

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw


@dataclasses.dataclass(frozen=True)
class PathfinderConfig:
  """Generator parameters (defaults: PF-gen; per-resolution values in `CONFIGS`)."""

  image_size: int
  padding: int = 22
  paddle_length: float = 5.0
  paddle_thickness: float = 1.5
  paddle_margins: tuple[int, ...] = (4,)
  seed_distance: float = 27.0
  marker_radius: float = 3.0
  continuity: float = 1.4
  antialias_scale: int = 2
  contour_length: int = 14
  distractors_total: int = 30  # num_distractor_snakes = distractors_total // distractor_length
  snake_contrast: float = 1.0
  paddle_contrast: float = 1.0
  max_paddle_retrial: int = 4
  max_distractor_contour_retrial: int = 4
  max_backtracks: int = 20  # ours: dead-end undos per image attempt (0 = original)
  backtrack_depth: int = 3  # ours: paddles removed per undo (3: fewest grow calls)
  max_image_restarts: int = 1000

  def __post_init__(self):
    if self.image_size < 8:
      raise ValueError(f"{self.image_size=} must be >= 8")
    if self.contour_length < 2:
      raise ValueError(f"{self.contour_length=} must be >= 2")
    width = self.paddle_thickness * self.antialias_scale
    if abs(width - round(width)) > 1e-6 or width < 1:
      raise ValueError(
        f"paddle_thickness * antialias_scale must be a positive integer, got "
        f"{self.paddle_thickness=} {self.antialias_scale=}"
      )

  @property
  def distractor_length(self) -> int:
    return max(1, self.contour_length // 3)

  @property
  def num_distractor_snakes(self) -> int:
    return self.distractors_total // self.distractor_length


# The "hard" (curv_contour_length_14) settings of LRA's Pathfinder docstrings.
CONFIGS: dict[int, PathfinderConfig] = {
  32: PathfinderConfig(
    32,
    padding=1,
    paddle_length=2,
    paddle_thickness=0.5,
    paddle_margins=(1,),
    seed_distance=7,
    marker_radius=1.5,
    continuity=1.0,
    distractors_total=20,
    snake_contrast=2.0,
    paddle_contrast=0.75,
  ),
  64: PathfinderConfig(
    64,
    padding=1,
    paddle_thickness=1.0,
    paddle_margins=(1,),
    seed_distance=12,
    marker_radius=2.5,
    continuity=1.8,
    distractors_total=22,
    snake_contrast=0.8,
  ),
  128: PathfinderConfig(
    128,
    padding=1,
    paddle_thickness=1.5,
    paddle_margins=(2, 3),
    seed_distance=20,
    marker_radius=3,
    continuity=1.8,
    distractors_total=35,
    snake_contrast=0.9,
  ),
  256: PathfinderConfig(
    256,
    paddle_thickness=2.0,
    paddle_margins=(3,),
    marker_radius=5,
    continuity=1.8,
    distractors_total=30,
    snake_contrast=1.0,
  ),
}


class _Restart(Exception):
  """The current image cannot be completed; start it again."""


def _disk(radius: float) -> np.ndarray:
  r = int(math.ceil(radius))
  dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
  keep = dy * dy + dx * dx <= radius * radius + 1e-9
  return np.stack([dy[keep], dx[keep]], axis=1)


class _Canvas:
  """Occupancy bookkeeping at image resolution for one image."""

  def __init__(self, cfg: PathfinderConfig, margin: int):
    self.cfg = cfg
    self.size = cfg.image_size
    self.margin = margin
    # count > 0 means blocked; a snake's own newest paddle is subtracted when that snake
    # grows, so a paddle never blocks its own successor.
    self.count = np.zeros((self.size, self.size), np.int16)
    p = cfg.padding
    self.count[:p, :] = 1
    self.count[-p:, :] = 1
    self.count[:, :p] = 1
    self.count[:, -p:] = 1
    self.dilation = _disk(margin + cfg.paddle_thickness / 2)
    self.body = _disk(cfg.paddle_thickness / 2)
    self.steps = np.linspace(0.0, 1.0, int(math.ceil(cfg.paddle_length / 0.5)) + 1)[:, None]
    # Candidate turns of `grow`, relative to the current direction: one per pixel of arc
    # on the circle of radius paddle_length + margin, kept where the continuity weight
    # max(cos(min(|turn| * continuity, pi/2)), 0)^2 is non-zero.
    radius = cfg.paddle_length + margin
    num = max(16, int(math.ceil(2 * math.pi * radius)))
    turns = np.arange(num) * (2 * math.pi / num)
    turns = (turns + math.pi) % (2 * math.pi) - math.pi
    bend = np.abs(turns) * cfg.continuity
    # cos(pi/2) is 6e-17, not 0: cut explicitly, or dead ends would allow U-turns.
    keep = bend < math.pi / 2 - 1e-6
    self.turns = turns[keep]
    self.turn_weights = np.cos(bend[keep]) ** 2

  def segment_pixels(self, tail, head, offsets):
    """Pixels within the offset disk of the segment, or None if it leaves the image."""
    # Bounds from the end points in plain Python: numpy reductions on a handful of
    # points cost more than the rest of this function.
    t0, t1 = float(tail[0]), float(tail[1])
    h0, h1 = float(head[0]), float(head[1])
    lo, hi = min(t0, t1, h0, h1), max(t0, t1, h0, h1)
    if lo < -0.5 or hi >= self.size - 0.5:
      return None
    pts = np.rint(tail + self.steps * (head - tail)).astype(np.int32)
    pix = (pts[:, None, :] + offsets[None, :, :]).reshape(-1, 2)
    reach = len(offsets) and int(np.abs(offsets).max())
    if lo - reach < 0.5 or hi + reach >= self.size - 1.5:
      pix = np.clip(pix, 0, self.size - 1)
    return pix[:, 0], pix[:, 1]

  def blocked(self, pix, own) -> bool:
    counts = self.count[pix]
    if own is not None:
      counts = counts - own[pix]
    return bool((counts > 0).any())

  def commit(self, tail, head) -> np.ndarray:
    """Marks the dilated footprint of a paddle; returns it as an int16 grid."""
    pix = self.segment_pixels(tail, head, self.dilation)
    grid = np.zeros_like(self.count)
    grid[pix] = 1
    self.count += grid
    return grid


def _unit(theta: float) -> np.ndarray:
  return np.array((math.sin(theta), math.cos(theta)))  # (row, col)


class _Snake:
  def __init__(self, tail, theta, canvas: _Canvas):
    self.canvas = canvas
    self.paddles = []
    self.grids = []  # dilated footprint of each paddle, to undo it on backtracking
    self._add(np.asarray(tail, float), theta)

  @property
  def last_grid(self):
    return self.grids[-1]

  def _add(self, tail, theta):
    head = tail + self.canvas.cfg.paddle_length * _unit(theta)
    self.paddles.append((tail, head, theta))
    self.grids.append(self.canvas.commit(tail, head))

  def pop(self):
    self.paddles.pop()
    self.canvas.count -= self.grids.pop()

  def remove(self):
    while self.paddles:
      self.pop()

  def grow(self, rng: np.random.Generator) -> bool:
    """Adds one paddle continuing the snake; False if no placement was found."""
    cfg, canvas, m = self.canvas.cfg, self.canvas, self.canvas.margin
    _, head, theta = self.paddles[-1]
    # The next paddle starts a gap of 2 * margin after this head and turns about `pivot`.
    pivot = head + m * _unit(theta)
    radius = cfg.paddle_length + m
    phis = theta + canvas.turns
    dirs = np.stack([np.sin(phis), np.cos(phis)], axis=1)
    heads = np.rint(pivot + radius * dirs).astype(np.int32)
    p0, p1 = float(pivot[0]), float(pivot[1])
    if min(p0, p1) - radius >= 0.5 and max(p0, p1) + radius < canvas.size - 1.5:
      hr, hc = heads[:, 0], heads[:, 1]
      free = (canvas.count[hr, hc] - self.last_grid[hr, hc]) <= 0
      weights = np.where(free, canvas.turn_weights, 0.0)
    else:
      inside = ((heads >= 0) & (heads < canvas.size)).all(axis=1)
      hr, hc = heads[inside, 0], heads[inside, 1]
      free = (canvas.count[hr, hc] - self.last_grid[hr, hc]) <= 0
      weights = np.zeros_like(canvas.turn_weights)
      weights[inside] = np.where(free, canvas.turn_weights[inside], 0.0)
    total = weights.sum()
    if total <= 0:
      return False
    cdf = np.cumsum(weights / total)
    for _ in range(cfg.max_paddle_retrial):
      k = min(int(np.searchsorted(cdf, rng.random(), side="right")), len(cdf) - 1)
      tail = pivot + m * dirs[k]
      new_head = pivot + radius * dirs[k]
      pix = canvas.segment_pixels(tail, new_head, canvas.body)
      if pix is None or canvas.blocked(pix, self.last_grid):
        continue
      self._add(tail, float(phis[k]))
      return True
    return False

  def grow_to(self, length: int, rng, budget: list[int]) -> bool:
    """Grows to `length` paddles, undoing dead ends while `budget[0]` lasts."""
    while len(self.paddles) < length:
      if self.grow(rng):
        continue
      if budget[0] <= 0 or len(self.paddles) < 2:
        return False
      budget[0] -= 1
      # Undoing one paddle often leads into the same dead end; a few give room to turn.
      for _ in range(min(self.canvas.cfg.backtrack_depth, len(self.paddles) - 1)):
        self.pop()
    return True


def _random_angle(rng) -> float:
  return math.radians(int(rng.integers(-180, 180)))


def _try_seed(canvas: _Canvas, tail, theta):
  """A first paddle at `tail` if it fits, else None."""
  head = np.asarray(tail, float) + canvas.cfg.paddle_length * _unit(theta)
  pix = canvas.segment_pixels(tail, head, canvas.body)
  if pix is None or canvas.blocked(pix, None):
    return None
  return _Snake(tail, theta, canvas)


def _sample_free_pixel(canvas: _Canvas, rng, border: int):
  free = canvas.count <= 0
  if border > 0 and 2 * border < canvas.size:
    inner = np.zeros_like(free)
    inner[border:-border, border:-border] = True
    free &= inner
  rows, cols = np.nonzero(free)
  if rows.size == 0:
    return None
  k = int(rng.integers(rows.size))
  return np.array([rows[k], cols[k]], float)


def _targets(canvas: _Canvas, rng):
  cfg = canvas.cfg
  border = int(2 * cfg.seed_distance)
  for _ in range(cfg.max_paddle_retrial):
    tail = _sample_free_pixel(canvas, rng, border)
    if tail is None:
      raise _Restart()
    snake_a = _try_seed(canvas, tail, _random_angle(rng))
    if snake_a is not None:
      break
  else:
    raise _Restart()
  for _ in range(cfg.max_paddle_retrial):
    tail_b = snake_a.paddles[0][0] + cfg.seed_distance * _unit(_random_angle(rng))
    snake_b = _try_seed(canvas, tail_b, _random_angle(rng))
    if snake_b is not None:
      break
  else:
    raise _Restart()
  # Grow both snakes in turn so that neither gets the free space first. A dead end
  # undoes the last paddle (bounded by `budget`) instead of restarting the image: at
  # the published settings most straight-ish snakes reach the border, and restarts
  # alone would cost tens of attempts per image.
  budget = [cfg.max_backtracks]
  for length in range(2, cfg.contour_length + 1):
    for snake in (snake_a, snake_b):
      if not snake.grow_to(length, rng, budget):
        raise _Restart()
  return snake_a, snake_b


def _distractors(canvas: _Canvas, rng) -> list[_Snake]:
  cfg = canvas.cfg
  snakes = []
  for _ in range(cfg.num_distractor_snakes):
    for _ in range(cfg.max_distractor_contour_retrial):
      if np.mean(canvas.count <= 0) < 0.01:
        return snakes
      tail = _sample_free_pixel(canvas, rng, 0)
      snake = None if tail is None else _try_seed(canvas, tail, _random_angle(rng))
      if snake is None:
        continue
      # Short snakes: a couple of undos, then a fresh start is cheaper.
      if snake.grow_to(cfg.distractor_length, rng, [min(2, cfg.max_backtracks)]):
        snakes.append(snake)
        break
      snake.remove()
  return snakes


def _render(cfg: PathfinderConfig, layers) -> np.ndarray:
  """Draws (paddles, markers, intensity) layers at antialias scale; uint8 [S, S]."""
  s, big = cfg.antialias_scale, cfg.image_size * cfg.antialias_scale
  width = int(round(cfg.paddle_thickness * s))
  out = np.zeros((cfg.image_size, cfg.image_size), np.float32)
  for paddles, markers, intensity in layers:
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    for tail, head in paddles:
      # PIL wants (x, y) = (col, row); +0.5 centres pixel coordinates.
      draw.line(
        [((tail[1] + 0.5) * s, (tail[0] + 0.5) * s), ((head[1] + 0.5) * s, (head[0] + 0.5) * s)],
        fill=255,
        width=width,
      )
    r = cfg.marker_radius * s
    for centre in markers:
      cy, cx = (centre[0] + 0.5) * s, (centre[1] + 0.5) * s
      draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    small = img.resize((cfg.image_size, cfg.image_size), Image.LANCZOS)
    out = np.maximum(out, np.asarray(small, np.float32) * (intensity / 255.0))
  peak = out.max()
  if peak > 0:  # The original saved with scipy's imsave, which rescales to 0..255.
    out = out * (255.0 / peak)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def generate_image(cfg: PathfinderConfig, seed: int, index: int) -> tuple[np.ndarray, int, int]:
  """One image, deterministic in (cfg, seed, index).

  Returns:
    (image uint8 [S, S], label in {0, 1}, paddle margin used).
  """
  rng = np.random.default_rng([seed, index])
  label = int(rng.integers(2))
  for _ in range(cfg.max_image_restarts):
    margin = int(rng.choice(cfg.paddle_margins))
    canvas = _Canvas(cfg, margin)
    try:
      snake_a, snake_b = _targets(canvas, rng)
    except _Restart:
      continue
    distractors = _distractors(canvas, rng)
    origin, other = (snake_a, snake_b) if rng.integers(2) == 0 else (snake_b, snake_a)
    terminal = origin if label == 1 else other
    markers = [origin.paddles[0][0], terminal.paddles[-1][1]]
    paddles = lambda snakes: [(t, h) for sn in snakes for t, h, _ in sn.paddles]
    layers = [
      (paddles(distractors), [], cfg.snake_contrast),
      (paddles([snake_a, snake_b]), [], cfg.snake_contrast * cfg.paddle_contrast),
      ([], markers, 1.0),
    ]
    return _render(cfg, layers), label, margin
  raise RuntimeError(f"No valid Pathfinder image after {cfg.max_image_restarts} restarts; {cfg=}")
