"""Every attention of the library behind one registry, selected by name.

    layer = mra_jax.attentions.build("performer", num_heads=8, head_dim=64,
                                     max_length=4096, rngs=nnx.Rngs(0), num_features=256)
    out_BxLxHxD = layer(q_BxLxHxD, k_BxLxHxD, v_BxLxHxD, mask=mask_BxL)

Each entry is an NNX module class with two class attributes: `Knobs`, the frozen dataclass
of the method's settings (declared once, defaults from the MRA paper's LRA configs,
validated in its `__post_init__`; see `mra_jax.knobs`), and `FIXED_KNOBS`, the fields the
entry pins (MRA-2 and MRA-2-s share `MraConfig` and differ in `approx_mode`). A module is
built as `cls(knobs, num_heads=..., head_dim=..., max_length=..., rngs=...)`. Modules are
imported on first use, so one method's import cost (or absence) never touches the others.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from flax import nnx

from mra_jax import knobs as knobs_lib

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


def names() -> list[str]:
  """Sorted names of every registered attention."""
  return sorted(_ENTRIES)


def module_class(name: str) -> type[nnx.Module]:
  """The NNX module class registered as `name`.

  Raises:
    ValueError: unknown name (the message lists `names()` and the closest one).
  """
  if name not in _ENTRIES:
    raise ValueError(
      f"unknown attention name={name!r}" + _did_you_mean(name, names()) + f"; registered: {names()}"
    )
  module, cls = _ENTRIES[name].split(":")
  return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def knobs_class(name: str) -> type:
  """The frozen dataclass of `name`'s knobs (its fields include any the entry pins)."""
  return module_class(name).Knobs


def fixed_knobs(name: str) -> dict[str, Any]:
  """The knobs the entry `name` pins (e.g. `approx_mode` of mra2 / mra2_s)."""
  return dict(getattr(module_class(name), "FIXED_KNOBS", {}))


def knob_defaults(name: str) -> dict[str, Any]:
  """{knob: default} of the knobs a user sets for `name` (the pinned ones left out)."""
  fixed = fixed_knobs(name)
  return {k: v for k, v in knobs_lib.defaults(knobs_class(name)).items() if k not in fixed}


def knob_types(name: str) -> dict[str, type]:
  """{knob: type of its values} for `knob_defaults(name)` (None defaults have a type too)."""
  types = knobs_lib.value_types(knobs_class(name))
  return {k: types[k] for k in knob_defaults(name)}


def knob_docs(name: str) -> dict[str, str]:
  """{knob: description} from the knobs dataclass's docstring."""
  docs = knobs_lib.docs(knobs_class(name))
  return {k: docs.get(k, "") for k in knob_defaults(name)}


def make_knobs(name: str, **values) -> Any:
  """`name`'s knobs dataclass from keyword values (defaults for the rest, pinned ones set).

  Raises:
    ValueError: unknown name, unknown knob (with the closest one), pinned knob, bad value.
  """
  cls, fixed = knobs_class(name), fixed_knobs(name)
  pinned = sorted(set(values) & set(fixed))
  if pinned:
    raise ValueError(
      f"attention {name!r} pins {', '.join(f'{k}={fixed[k]!r}' for k in pinned)}; "
      "choose the registry entry instead of setting it"
    )
  unknown = set(values) - set(knob_defaults(name))
  if unknown:
    raise ValueError(
      knobs_lib.unknown_message(f"knob for attention {name!r}:", unknown, knob_defaults(name))
    )
  return cls(**values, **fixed)


def build(
  name: str,
  *,
  num_heads: int,
  head_dim: int,
  max_length: int,
  rngs: nnx.Rngs,
  knobs: Any = None,
  **knob_values,
) -> nnx.Module:
  """Builds the attention `name` with its knobs (defaults for those not given).

  Args:
    name: one of `names()`.
    num_heads: H of the [B, L, H, D] inputs.
    head_dim: D of the inputs.
    max_length: the longest L the module will see (Linformer's projection is this long).
    rngs: source of the module's parameters and fixed random features.
    knobs: the method's knobs dataclass (`make_knobs(name, ...)`), instead of keywords.
    **knob_values: the method's own settings, see `knob_defaults(name)`.

  Returns:
    An nnx.Module called as `module(query, key, value, mask=None)` on [B, L, H, D] inputs.

  Raises:
    ValueError: unknown name, unknown knob, or a knob value the method refuses.
  """
  if knobs is None:
    knobs = make_knobs(name, **knob_values)
  elif (
    knob_values
    or not isinstance(knobs, knobs_class(name))
    or any(getattr(knobs, k) != v for k, v in fixed_knobs(name).items())
  ):
    raise ValueError(
      f"knobs must be attention {name!r}'s {knobs_class(name).__name__}, given alone; got "
      f"knobs={knobs!r} with {sorted(knob_values)}"
    )
  return module_class(name)(
    knobs,
    num_heads=num_heads,
    head_dim=head_dim,
    max_length=max_length,
    rngs=rngs,
  )


def _did_you_mean(name: str, known) -> str:
  close = difflib.get_close_matches(name, list(known), n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""
