"""Which attentions the benchmarks run, at which budgets, and how each is built.

Budgets follow the MRA paper's profiler (docs/benchmarks.md, "The published figures"): MRA-2 and
MRA-2-s over `block_per_row`, Nystromformer over landmarks, Longformer and Scatterbrain
over windows, BigBird over block sizes. Every other registered attention runs once at its
registry defaults (the paper's LRA configs). A swept knob missing from
`attentions.knob_defaults(name)` runs that method at its defaults only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from mra_jax import attentions

# Budget sweeps: registry name -> (the knob swept, its values). Values are those the
# paper's efficiency JSONs list at N=512 and N=4096 (capped per length by `fits`); the
# --quick runs take a subset.
SWEEPS: dict[str, tuple[str, tuple[int, ...]]] = {
  "mra2": ("block_per_row", (1, 2, 4, 8, 16, 32, 64)),
  "mra2_s": ("block_per_row", (1, 2, 4, 8, 16, 32, 64)),
  "nystromformer": ("num_landmarks", (16, 32, 64, 128, 256, 512, 1024)),
  "longformer": ("window_size", (16, 32, 64, 128, 256, 512, 1024)),
  "scatterbrain": ("window_size", (16, 32, 64, 128, 256, 512, 1024)),
  "bigbird": ("block_size", (8, 16, 32, 64, 128)),
}

# Largest budget the paper ran at length L, as L divided by this (bpr <= N/64 at 512 and
# 4096; landmarks and windows <= N/4; BigBird blocks <= N/16 at 512).
_MAX_BUDGET_DIVISOR = {
  "mra2": 64,
  "mra2_s": 64,
  "nystromformer": 4,
  "longformer": 4,
  "scatterbrain": 4,
  "bigbird": 16,
}


@dataclasses.dataclass(frozen=True)
class Method:
  """One attention at one budget.

  Attributes:
    name: registry name.
    knobs: keyword overrides passed to `build` (empty = registry defaults).
    budget: the swept knob's value, or None for a defaults-only method.
    knob: the swept knob's name, or None.
  """

  name: str
  knobs: dict[str, Any]
  budget: int | None = None
  knob: str | None = None

  @property
  def label(self) -> str:
    return self.name if self.knob is None else f"{self.name}[{self.knob}={self.budget}]"


def fits(method: Method, length: int) -> bool:
  """Whether the paper's profiler ran this budget at this length (see SWEEPS)."""
  if method.budget is None:
    return True
  return method.budget <= max(length // _MAX_BUDGET_DIVISOR[method.name], 1)


def registered_names() -> list[str]:
  """Every name in the attention registry."""
  return list(attentions.names())


def methods_for(
  names: list[str], budgets: dict[str, tuple[int, ...]] | None = None
) -> tuple[list[Method], list[str]]:
  """Expands registry names into `Method`s, one per budget of the swept ones.

  Args:
    names: registry names to run.
    budgets: optional per-name override of the swept values (e.g. fewer for --quick).

  Returns:
    (methods, problems): problems are one line per name whose defaults could not be read.
  """
  methods, problems = [], []
  for name in names:
    try:
      defaults = attentions.knob_defaults(name)
    except Exception as e:  # pylint: disable=broad-except
      problems.append(f"{name}: knob_defaults failed: {type(e).__name__}: {e}")
      continue
    knob, values = SWEEPS.get(name, (None, ()))
    knob = knob if knob in defaults else None
    if budgets is not None and name in budgets:
      values = budgets[name]
    if knob is None or not values:
      methods.append(Method(name, {}))
    else:
      methods.extend(Method(name, {knob: v}, v, knob) for v in values)
  return methods, problems


def build(
  method: Method, *, num_heads: int, head_dim: int, max_length: int
) -> Callable[..., jax.Array]:
  """An attention function `(q, k, v, mask=None) -> out`, [B, L, H, D] arrays, mask [B, L].

  Parameters and random features come from `nnx.Rngs(0)` (random init for learned
  methods such as Linformer's projections), and are closed over as constants.
  """
  layer = attentions.build(
    method.name,
    num_heads=num_heads,
    head_dim=head_dim,
    max_length=max_length,
    rngs=nnx.Rngs(0),
    **method.knobs,
  )
  graphdef, state = nnx.split(layer)

  def attend(q, k, v, mask=None):
    return nnx.merge(graphdef, state)(q, k, v, mask=mask)

  return attend
