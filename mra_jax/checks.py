"""Argument checks shared by the library: each raises ValueError naming the argument.

They run where a knob is accepted (a config or a module's constructor), before any work,
so a bad value fails with its name and value instead of deep inside a traced program.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def check_int(name: str, value: Any, *, minimum: int) -> None:
  """Raises ValueError unless `value` is an int (not a bool) >= `minimum`.

  Args:
    name: the argument's name, used in the message.
    value: the value to check.
    minimum: the smallest value allowed (1 for "positive", 0 for "non-negative").

  Raises:
    ValueError: naming the argument and its value, e.g. "window_size must be an integer
      >= 1; got window_size=0".
  """
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}; got {name}={value!r}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
  """Raises ValueError unless `value` is one of `choices` (the message lists them)."""
  choices = tuple(choices)
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}; got {name}={value!r}")
