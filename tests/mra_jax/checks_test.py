"""The argument checks: what they accept, and messages that name the argument and value."""

import re

import pytest

from mra_jax import checks


@pytest.mark.parametrize("minimum", [0, 1, 5])
def test_check_int_accepts_the_minimum_and_refuses_one_below(minimum):
  checks.check_int("count", minimum, minimum=minimum)
  checks.check_int("count", minimum + 7, minimum=minimum)
  with pytest.raises(ValueError, match=f"count={minimum - 1}"):
    checks.check_int("count", minimum - 1, minimum=minimum)


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "4", None])
def test_check_int_refuses_and_names_the_argument(value):
  message = f"window_size must be an integer >= 1; got window_size={value!r}"
  with pytest.raises(ValueError, match=re.escape(message)):
    checks.check_int("window_size", value, minimum=1)


def test_check_choice_lists_the_choices():
  checks.check_choice("kernel_type", "exp", ("exp", "relu"))
  with pytest.raises(ValueError, match=r"kernel_type must be one of \('exp', 'relu'\); got "):
    checks.check_choice("kernel_type", "tanh", ("exp", "relu"))
