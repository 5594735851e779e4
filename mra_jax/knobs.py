"""Knobs declared once: a frozen dataclass per method, read by its function, module and configs.

Every attention keeps its settings ("knobs") in one frozen dataclass whose `__post_init__`
validates them (`MraConfig` for MRA, `LocalKnobs` for local attention, ...). Everything else
reads that declaration instead of repeating it:

* the function takes the knobs as keyword arguments (`local_attention(q, k, v,
  window_size=32)`) or as the dataclass itself, through `takes_knobs`, which also shows the
  dataclass's fields in the function's signature;
* the NNX module takes the dataclass (`LocalAttention(knobs, num_heads=..., ...)`);
* the registry (`mra_jax.attentions`) and the LRA configs list, type and document the knobs
  from the dataclass's fields and its `Attributes:` docstring.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def names(knobs_cls: type) -> tuple[str, ...]:
  """The knob names of a knobs dataclass, in declaration order."""
  return tuple(f.name for f in dataclasses.fields(knobs_cls) if f.init)


def defaults(knobs_cls: type) -> dict[str, Any]:
  """{knob: default} of a knobs dataclass (every knob has a default)."""
  return {f.name: f.default for f in dataclasses.fields(knobs_cls) if f.init}


def value_types(knobs_cls: type) -> dict[str, type]:
  """{knob: the type of its values}: `int | None` gives int, `tuple[int, int] | None` tuple.

  For tools that need a value's type where the default is None (command-line parsers).
  """
  hints = typing.get_type_hints(knobs_cls)
  out = {}
  for name in names(knobs_cls):
    hint = hints[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
      hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(hint) or hint
    out[name] = origin if isinstance(origin, type) else object
  return out


_ATTRIBUTE = re.compile(r"^(\s*)(\w+)(?: \([^)]*\))?: (.*)$")


def docs(knobs_cls: type) -> dict[str, str]:
  """{knob: one-paragraph description} read from the class's Google-style `Attributes:`."""
  doc = inspect.getdoc(knobs_cls) or ""
  out: dict[str, str] = {}
  inside, indent, current = False, None, None
  for line in doc.splitlines():
    if line.strip() == "Attributes:":
      inside, indent, current = True, None, None
      continue
    if not inside:
      continue
    if line and not line.startswith(" "):
      break  # the next section
    match = _ATTRIBUTE.match(line)
    if match and (indent is None or len(match.group(1)) == indent):
      indent, current = len(match.group(1)), match.group(2)
      out[current] = match.group(3).strip()
    elif current is not None and line.strip():
      out[current] += " " + line.strip()
  return {k: v for k, v in out.items() if k in names(knobs_cls)}


def unknown_message(what: str, unknown: Iterable[str], known: Iterable[str]) -> str:
  """'unknown knob ... (did you mean ...?); known: ...', one line."""
  known = sorted(known)
  parts = []
  for name in sorted(unknown):
    close = difflib.get_close_matches(name, known, n=1)
    parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
  return f"unknown {what} {', '.join(parts)}; known: {known}"


def make(knobs_cls: type, values: Mapping[str, Any], *, what: str = "knob", base=None):
  """`knobs_cls(**values)` (or `base` with `values` replaced), unknown names refused.

  Raises:
    ValueError: an unknown name (with the closest known one), or a value the dataclass's
      `__post_init__` refuses.
  """
  unknown = set(values) - set(names(knobs_cls))
  if unknown:
    raise ValueError(unknown_message(what, unknown, names(knobs_cls)))
  if base is None:
    return knobs_cls(**values)
  if not isinstance(base, knobs_cls):
    raise ValueError(f"expected a {knobs_cls.__name__}; got {type(base).__name__}")
  return dataclasses.replace(base, **values) if values else base


def takes_knobs(knobs_cls: type, *, param: str = "config") -> Callable[[F], F]:
  """Lets a function whose last keyword argument `param` is a `knobs_cls` take its fields.

  The decorated function accepts the dataclass (`param=...`), its fields as keywords, or
  both (the keywords replace the dataclass's values); it receives one validated instance.
  Its signature, as `help()` and IDEs show it, lists the fields with their defaults.
  """

  def decorate(fn: F) -> F:
    signature = inspect.signature(fn)
    if param not in signature.parameters:
      raise TypeError(f"{fn.__name__} has no parameter {param!r}")
    field_params = [
      inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
      for name, default in defaults(knobs_cls).items()
    ]
    own = [
      p.replace(default=None) if p.name == param else p
      for p in signature.parameters.values()
      if p.kind != inspect.Parameter.VAR_KEYWORD
    ]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      base = kwargs.pop(param, None)
      own_names = {p.name for p in own}
      field_values = {k: kwargs.pop(k) for k in list(kwargs) if k not in own_names}
      if base is None and not field_values:
        config = knobs_cls()
      else:
        config = make(knobs_cls, field_values, what=f"argument of {fn.__name__}", base=base)
      return fn(*args, **{param: config}, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=own + field_params)
    return wrapper  # type: ignore[return-value]

  return decorate
