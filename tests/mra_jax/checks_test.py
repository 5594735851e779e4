"""The argument checks: what they accept, and messages that name the argument and value."""

import re

import pytest

from mra_jax import checks


def test_check_int_accepts_ints_at_or_above_the_minimum():
  checks.check_int("window_size", 1, minimum=1)
  checks.check_int("num_random_blocks", 0, minimum=0)


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "4", None])
def test_check_int_refuses_and_names_the_argument(value):
  message = f"window_size must be an integer >= 1; got window_size={value!r}"
  with pytest.raises(ValueError, match=re.escape(message)):
    checks.check_int("window_size", value, minimum=1)


def test_check_choice_lists_the_choices():
  checks.check_choice("kernel_type", "exp", ("exp", "relu"))
  with pytest.raises(ValueError, match=r"kernel_type must be one of \('exp', 'relu'\); got "):
    checks.check_choice("kernel_type", "tanh", ("exp", "relu"))
