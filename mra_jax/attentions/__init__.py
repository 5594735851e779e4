"""Every attention of the library behind one registry, selected by name.

    layer = mra_jax.attentions.build("performer", num_heads=8, head_dim=64,
                                     max_length=4096, rngs=nnx.Rngs(0), num_features=256)
    out_BxLxHxD = layer(q_BxLxHxD, k_BxLxHxD, v_BxLxHxD, mask=mask_BxL)

Each entry is an NNX module class; its keyword arguments after `rngs` are the method's
knobs, with the defaults of the MRA paper's LRA configs. Modules are imported on first use,
so one method's import cost (or absence) never touches the others.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from flax import nnx

# name -> "module:Class" under mra_jax.attentions.
_ENTRIES = {
  "adamra": "adamra:AdaMraAttention",
  "bigbird": "bigbird:BigBirdAttention",
  "h_transformer_1d": "h_transformer_1d:HTransformer1DAttention",
  "linformer": "linformer:LinformerAttention",
  "local": "local:LocalAttention",
  "longformer": "longformer:LongformerAttention",
  "mra2": "mra:Mra2Attention",
  "mra2_s": "mra:Mra2SAttention",
  "nystromformer": "nystromformer:NystromformerAttention",
  "performer": "performer:PerformerAttention",
  "reformer": "reformer:ReformerAttention",
  "scatterbrain": "scatterbrain:ScatterbrainAttention",
  "soft": "soft:SoftAttention",
  "softmax": "softmax:SoftmaxAttention",
  "yoso": "yoso:YosoAttention",
}
# Arguments every module takes; everything else in its signature is a knob.
_COMMON = ("self", "num_heads", "head_dim", "max_length", "rngs")


def names() -> list[str]:
  """Sorted names of every registered attention."""
  return sorted(_ENTRIES)


def module_class(name: str) -> type[nnx.Module]:
  """The NNX module class registered as `name`.

  Raises:
    ValueError: unknown name (the message lists `names()`).
  """
  if name not in _ENTRIES:
    raise ValueError(f"unknown attention name={name!r}; registered: {names()}")
  module, cls = _ENTRIES[name].split(":")
  return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def knob_defaults(name: str) -> dict[str, Any]:
  """The knobs of `name` and their defaults, read from its class signature."""
  params = inspect.signature(module_class(name).__init__).parameters
  return {
    k: p.default
    for k, p in params.items()
    if k not in _COMMON and p.kind == inspect.Parameter.KEYWORD_ONLY
  }


def build(
  name: str, *, num_heads: int, head_dim: int, max_length: int, rngs: nnx.Rngs, **knobs
) -> nnx.Module:
  """Builds the attention `name` with its knobs (defaults for those not given).

  Args:
    name: one of `names()`.
    num_heads: H of the [B, L, H, D] inputs.
    head_dim: D of the inputs.
    max_length: the longest L the module will see (Linformer's projection is this long).
    rngs: source of the module's parameters and fixed random features.
    **knobs: the method's own settings, see `knob_defaults(name)`.

  Returns:
    An nnx.Module called as `module(query, key, value, mask=None)` on [B, L, H, D] inputs.

  Raises:
    ValueError: unknown name, unknown knob, or a knob value the method refuses.
  """
  cls = module_class(name)
  allowed = knob_defaults(name)
  unknown = sorted(set(knobs) - set(allowed))
  if unknown:
    raise ValueError(
      f"unknown knob(s) {unknown} for attention name={name!r}; allowed knobs: {sorted(allowed)}"
    )
  return cls(num_heads=num_heads, head_dim=head_dim, max_length=max_length, rngs=rngs, **knobs)
