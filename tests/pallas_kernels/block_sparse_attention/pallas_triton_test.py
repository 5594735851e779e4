"""The Pallas Triton kernels against the contract, in interpret mode on CPU.

Interpret mode emulates each float32 dot precision's rounding (XLA:CPU cannot run the TF32
presets and computes the bf16 ones exactly), so every choice is held to its own tolerance.
"""
# pylint: disable=invalid-name

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.block_sparse_attention import api, pallas_triton, pallas_triton_dots
from pallas_kernels.block_sparse_attention.pallas_triton import PallasTriton
from tests.pallas_kernels.block_sparse_attention import contract

# Block 32 for every precision; block 64 too where it changes the kernels' loop structure
# (IEEE "float32" splits 64-row blocks; "float32" and "tf32x3" walk dK/dV columns twice).
_F32_CASE_NAMES = ("f32_bs32_mra_state", "f32_bs64_full_state")
_CASES_PER_PRECISION = {"float32": 2, "tf32x3": 2}


class TestPallasTritonInterpret(contract.BlockSparseAttentionContract):
  """Every contract case at the default precision (float32 cases at "bf16x3")."""

  IMPLEMENTATION = PallasTriton(interpret=True)
  FAST_CASE_NAMES = contract.INTERPRETER_FAST_CASE_NAMES


class TestPallasTritonInterpretHalfBlocks(contract.BlockSparseAttentionContract):
  """float32, block 64, D 128: two programs share each 64-row block (`rows_per_program`),
  bidirectional and causal (the mask then starts mid-block)."""

  pytestmark = pytest.mark.slow

  IMPLEMENTATION = PallasTriton(interpret=True)
  CASE_NAMES = ("f32_bs64_d128_two_rows", "f32_bs64_d128_causal_two_rows")
  test_causal_with_every_lower_tile_is_dense_causal_attention = None
  test_causal_query_ignores_later_keys = None


class TestPallasTritonInterpretSplitBlocks(contract.BlockSparseAttentionContract):
  """float32 at "tf32x3": 16-row programs in every kernel at block 64, D 128 (bidirectional
  and causal); at D 64, whole-block forward and dQ programs beside 32-row dK/dV programs
  (`rows_per_program`)."""

  pytestmark = pytest.mark.slow

  IMPLEMENTATION = PallasTriton(precision="tf32x3", interpret=True)
  CASE_NAMES = (
    "f32_bs64_d128_four_rows",
    "f32_bs64_d64_four_rows",
    "f32_bs64_d128_causal_two_rows",
  )
  test_causal_with_every_lower_tile_is_dense_causal_attention = None
  test_causal_query_ignores_later_keys = None


def _precision_class(precision):
  name = "TestPallasTritonInterpret_" + precision
  case_names = _F32_CASE_NAMES[: _CASES_PER_PRECISION.get(precision, 1)]
  attributes = dict(
    # The slow tier: the fast one runs the default precision in TestPallasTritonInterpret.
    pytestmark=pytest.mark.slow,
    IMPLEMENTATION=PallasTriton(precision=precision, interpret=True),
    CASE_NAMES=case_names,
    # The causal properties do not depend on the dot precision (the default class has them).
    test_causal_with_every_lower_tile_is_dense_causal_attention=None,
    test_causal_query_ignores_later_keys=None,
  )
  return type(name, (contract.BlockSparseAttentionContract,), attributes)


# One contract subclass per float32 precision.
for _precision in pallas_triton.F32_PRECISIONS:
  globals()[f"TestPallasTritonInterpret_{_precision}"] = _precision_class(_precision)


def test_no_precision_runs_the_default_one():
  # float32 inputs without a precision run DEFAULT_F32_PRECISION's dots, not another's.
  args, _ = contract.inputs(contract.Case(H=1, Lq=64, Lk=64, D=16))
  attend = jax.jit(
    lambda precision, *args: api.block_sparse_attention(
      *args, block_size=32, implementation=PallasTriton(precision=precision, interpret=True)
    )[0],
    static_argnums=0,
  )
  default = attend(None, *args)
  np.testing.assert_array_equal(default, attend(pallas_triton.DEFAULT_F32_PRECISION, *args))
  others = [p for p in pallas_triton.F32_PRECISIONS if p != pallas_triton.DEFAULT_F32_PRECISION]
  assert all(not np.array_equal(default, attend(p, *args)) for p in others)


@pytest.mark.parametrize("precision", ["highest", "TF32", 3])
def test_unknown_precision_raises_naming_it(precision):
  args, _ = contract.inputs(contract.Case(H=1, Lq=64, Lk=64, D=16))
  with pytest.raises(ValueError, match=f"precision={precision!r}"):
    api.block_sparse_attention(
      *args, block_size=32, implementation="pallas_triton", precision=precision
    )
  with pytest.raises(ValueError, match=f"precision={precision!r}"):
    PallasTriton(precision=precision)


def test_half_precision_inputs_take_their_native_dot():
  assert pallas_triton_dots.resolve_precision("tf32", jnp.bfloat16) is None
  assert pallas_triton_dots.resolve_precision(None, jnp.float32) == "bf16x3"


@pytest.mark.parametrize("precision, bits", [("bf16", 7), ("tf32", 10)])
def test_one_pass_emulation_rounds_the_operands(precision, bits):
  # 1 + 2^-(bits+1) rounds to 1 (ties to even) at `bits` mantissa bits, 1 + 2^-bits stays.
  tie, kept = 1 + 2.0 ** -(bits + 1), 1 + 2.0**-bits
  a = jnp.asarray([[tie, kept]], jnp.float32)
  b = jnp.asarray([[1.0, 0.0], [0.0, 1.0]], jnp.float32)
  emulated = pallas_triton_dots.DotPrecision(precision, emulate=True)
  got = pallas_triton_dots.dot_nn(a, b, emulated)
  assert got.tolist() == [[1.0, kept]]
  exact = pallas_triton_dots.dot_nn(a, b, pallas_triton_dots.DotPrecision("float32", emulate=True))
  assert exact.tolist() == [[tie, kept]]
