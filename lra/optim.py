"""Learning-rate schedules and the AdamW optimizer of both LRA protocols.

`one_cycle` reproduces PyTorch's `OneCycleLR(anneal_strategy="linear")` as the MRA paper's
harness used it: start at peak/25, rise linearly to the peak over the warmup,
fall linearly to start/1e4 at the last step, and (`cycle_momentum`) move Adam's beta1
inversely between 0.95 and 0.85. `rsqrt` and `cosine` are the original LRA factor products
(docs/lra.md, "Protocols").
"""

import dataclasses
import math

import jax.numpy as jnp
import optax

SCHEDULES = ("one_cycle", "rsqrt", "cosine")
# PyTorch OneCycleLR defaults.
DIV_FACTOR = 25.0
FINAL_DIV_FACTOR = 1e4
BASE_MOMENTUM = 0.85
MAX_MOMENTUM = 0.95


def _one_cycle_fraction(step, warmup_steps: int, total_steps: int):
  """0 -> 1 over the warmup (step 0 .. warmup-1), 1 -> 0 until the last step."""
  step = jnp.asarray(step, jnp.float32)
  up_end = max(float(warmup_steps) - 1.0, 1.0)
  down_len = max(float(total_steps) - 1.0 - up_end, 1.0)
  rising = jnp.clip(step / up_end, 0.0, 1.0)
  falling = 1.0 - jnp.clip((step - up_end) / down_len, 0.0, 1.0)
  return jnp.where(step <= up_end, rising, falling), step <= up_end


def one_cycle_lr(peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """PyTorch `OneCycleLR` learning rate with linear annealing."""
  start = peak / DIV_FACTOR
  final = start / FINAL_DIV_FACTOR

  def schedule(step):
    frac, rising = _one_cycle_fraction(step, warmup_steps, total_steps)
    return jnp.where(rising, start + (peak - start) * frac, final + (peak - final) * frac)

  return schedule


def one_cycle_b1(warmup_steps: int, total_steps: int) -> optax.Schedule:
  """Beta1 moving opposite to the learning rate: 0.95 -> 0.85 -> 0.95."""

  def schedule(step):
    frac, _ = _one_cycle_fraction(step, warmup_steps, total_steps)
    return MAX_MOMENTUM - (MAX_MOMENTUM - BASE_MOMENTUM) * frac

  return schedule


def rsqrt_lr(factor: float, warmup_steps: int) -> optax.Schedule:
  """LRA's constant * linear_warmup * rsqrt_decay."""

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(1.0, step / max(warmup_steps, 1))
    return factor * warm / jnp.sqrt(jnp.maximum(step, float(max(warmup_steps, 1))))

  return schedule


def cosine_lr(factor: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """LRA's constant * linear_warmup * cosine_decay (one cycle of `total_steps`)."""

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(1.0, step / max(warmup_steps, 1))
    progress = jnp.maximum(0.0, (step - warmup_steps) / float(total_steps))
    return factor * warm * jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(math.pi * (progress % 1.0))))

  return schedule


def learning_rate_schedule(
  schedule: str, learning_rate: float, warmup_steps: int, total_steps: int
) -> optax.Schedule:
  """The schedule named `schedule` (one of `SCHEDULES`)."""
  if schedule == "one_cycle":
    if not 0 < warmup_steps < total_steps:
      raise ValueError(
        f"one_cycle needs 0 < warmup_steps < num_train_steps; got {warmup_steps=}, {total_steps=}"
      )
    return one_cycle_lr(learning_rate, warmup_steps, total_steps)
  if schedule == "rsqrt":
    return rsqrt_lr(learning_rate, warmup_steps)
  if schedule == "cosine":
    return cosine_lr(learning_rate, warmup_steps, total_steps)
  raise ValueError(f"schedule must be one of {SCHEDULES}; got {schedule=}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
  """AdamW and its schedule, validated on construction (hashable: a cache key).

  The fields but `learning_rate` and `total_steps` are the keys of a run config's
  `optimizer` block (declared here only; `lra.run_config` builds the block from them);
  those two come from the run's `learning_rate` and `num_train_steps`.

  Attributes:
    schedule: "one_cycle", "rsqrt" or "cosine".
    warmup_steps: linear warmup steps.
    weight_decay: decoupled (AdamW) weight decay, on every parameter.
    b1: Adam beta1 (unused when cycle_momentum).
    b2: Adam beta2.
    eps: Adam epsilon.
    cycle_momentum: one_cycle only: beta1 moves 0.95 -> 0.85 -> 0.95.
    grad_clip_norm: global-norm clipping; 0 = off.
  """

  schedule: str
  warmup_steps: int
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-6
  cycle_momentum: bool = True
  grad_clip_norm: float = 0.0
  # Peak (one_cycle) or constant factor (rsqrt, cosine): the run's learning_rate.
  learning_rate: float = dataclasses.field(metadata={"from_run": True})
  # Optimizer steps of the run: its num_train_steps.
  total_steps: int = dataclasses.field(metadata={"from_run": True})

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"schedule must be one of {SCHEDULES}; got schedule={self.schedule!r}")
    if self.total_steps < 1:
      raise ValueError(f"total_steps must be >= 1; got total_steps={self.total_steps}")
    if self.warmup_steps < 0:
      raise ValueError(f"warmup_steps must be >= 0; got warmup_steps={self.warmup_steps}")
    if self.schedule == "one_cycle" and not 0 < self.warmup_steps < self.total_steps:
      raise ValueError(
        "one_cycle needs 0 < warmup_steps < num_train_steps; got "
        f"warmup_steps={self.warmup_steps}, num_train_steps={self.total_steps}"
      )
    if self.cycle_momentum and self.schedule != "one_cycle":
      raise ValueError(
        f"cycle_momentum=True applies to schedule='one_cycle' only; got "
        f"schedule={self.schedule!r} (set optimizer.cycle_momentum=False)"
      )
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0; got learning_rate={self.learning_rate}")
    for name in ("b1", "b2"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"{name} must be in [0, 1); got {name}={getattr(self, name)}")
    for name in ("eps", "weight_decay", "grad_clip_norm"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0; got {name}={getattr(self, name)}")


def make_optimizer(
  cfg: OptimizerConfig,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (decoupled weight decay on every parameter), optional global-norm clipping.

  Returns:
    (optimizer, learning-rate schedule) — the schedule for logging.
  """
  lr = learning_rate_schedule(cfg.schedule, cfg.learning_rate, cfg.warmup_steps, cfg.total_steps)
  b1 = one_cycle_b1(cfg.warmup_steps, cfg.total_steps) if cfg.cycle_momentum else cfg.b1
  adamw = optax.inject_hyperparams(optax.adamw)(
    learning_rate=lr, b1=b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay
  )
  if cfg.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), adamw), lr
  return adamw, lr
