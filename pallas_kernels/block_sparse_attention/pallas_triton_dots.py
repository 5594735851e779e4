"""The Pallas Triton kernels' matrix products and the choice of float32 dot precision.

Float32 inputs take one of `F32_PRECISIONS`, each a `jax.lax.DotAlgorithmPreset` that the
Triton lowering turns into tensor-core passes or scalar FMAs:

| name        | preset              | what the GPU does                                  |
|-------------|---------------------|----------------------------------------------------|
| "bf16x3"    | BF16_BF16_F32_X3    | 3 bf16 passes: hi*hi + hi*lo + lo*hi (the default) |
| "float32"   | F32_F32_F32         | IEEE float32 by scalar FMA, no tensor cores        |
| "tf32x3"    | TF32_TF32_F32_X3    | 3 TF32 passes, as bf16x3 with 10-bit mantissas     |
| "tf32"      | TF32_TF32_F32       | one TF32 pass (inputs keep 10 mantissa bits)       |
| "bf16"      | BF16_BF16_F32       | one bf16 pass (inputs keep 7 mantissa bits)        |

Accumulation is float32 in every case. bfloat16 and float16 inputs always use their native
tensor-core dot: the precision applies to float32 inputs only.

Interpret mode runs on XLA:CPU, which refuses the TF32 presets and computes the bf16 ones in
full float32. So that interpret mode computes what the GPU computes, `dot` then emulates a
preset: operands are rounded with `jax.lax.reduce_precision` (round to nearest even), split
into high and low parts as the Triton lowering splits them, and the parts multiplied by exact
float32 dots (products of 8- or 11-bit mantissas are exact in float32). Tensor cores may
truncate TF32 operands instead of rounding them, which at most doubles the one-pass TF32 error.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_Preset = jax.lax.DotAlgorithmPreset
_PRESETS = {
  "bf16x3": _Preset.BF16_BF16_F32_X3,
  "float32": _Preset.F32_F32_F32,
  "tf32x3": _Preset.TF32_TF32_F32_X3,
  "tf32": _Preset.TF32_TF32_F32,
  "bf16": _Preset.BF16_BF16_F32,
}
# The float32 precision choices, default first.
F32_PRECISIONS = tuple(_PRESETS)
# Near-float32 error (about 1e-5 relative, see docs/kernels.md) on tensor cores: IEEE
# "float32" runs on scalar FMAs, an order of magnitude below tensor-core throughput.
DEFAULT_F32_PRECISION = "bf16x3"

# (mantissa bits kept per part, number of parts) of each emulated preset.
_SPLITS = {"bf16x3": (7, 2), "tf32x3": (10, 2), "tf32": (10, 1), "bf16": (7, 1)}


@dataclasses.dataclass(frozen=True)
class DotPrecision:
  """How the kernels multiply float32 operands (static: part of the kernel's trace).

  Attributes:
    name: a key of `F32_PRECISIONS`.
    emulate: emulate the preset's rounding with float32 dots (interpret mode).
  """

  name: str
  emulate: bool


def check_precision(precision: str | None) -> None:
  """Raises ValueError unless `precision` is None or one of `F32_PRECISIONS`."""
  if precision is not None and precision not in _PRESETS:
    raise ValueError(f"precision must be None or one of {F32_PRECISIONS}, got {precision=}")


def resolve_precision(precision: str | None, dtype) -> str | None:
  """The kernels' float32 precision name for inputs of `dtype`; None: the dtype's native dot.

  Args:
    precision: None (the default, `DEFAULT_F32_PRECISION`) or one of `F32_PRECISIONS`.
    dtype: the dtype of q, k and v; only float32 takes a precision.
  """
  check_precision(precision)
  if jnp.dtype(dtype) != jnp.float32:
    return None
  return precision or DEFAULT_F32_PRECISION


def _exact_dot(a, b, dims):
  return jax.lax.dot_general(
    a, b, dims, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32
  )


def _split(x, mantissa_bits: int, parts: int):
  """`parts` terms that sum to x up to the last part's rounding, each `mantissa_bits` wide."""
  terms = []
  for _ in range(parts):
    term = jax.lax.reduce_precision(x, exponent_bits=8, mantissa_bits=mantissa_bits)
    terms.append(term)
    x = x - term
  return terms


def _emulated_dot(a, b, dims, name: str):
  if name == "float32":
    return _exact_dot(a, b, dims)
  bits, parts = _SPLITS[name]
  a_terms, b_terms = _split(a, bits, parts), _split(b, bits, parts)
  if parts == 1:
    return _exact_dot(a_terms[0], b_terms[0], dims)
  (a_hi, a_lo), (b_hi, b_lo) = a_terms, b_terms
  # Smallest terms first, as the lowering accumulates them.
  return _exact_dot(a_lo, b_hi, dims) + _exact_dot(a_hi, b_lo, dims) + _exact_dot(a_hi, b_hi, dims)


def _dot(a, b, dims, precision: DotPrecision | None):
  if precision is None:
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)
  if precision.emulate:
    return _emulated_dot(a, b, dims, precision.name)
  return jax.lax.dot_general(
    a, b, dims, precision=_PRESETS[precision.name], preferred_element_type=jnp.float32
  )


def dot_nt(a_MxK: jax.Array, b_NxK: jax.Array, precision: DotPrecision | None) -> jax.Array:
  """`a @ b^T`, float32 `(M, N)`."""
  return _dot(a_MxK, b_NxK, (((1,), (1,)), ((), ())), precision)


def dot_nn(a_MxK: jax.Array, b_KxN: jax.Array, precision: DotPrecision | None) -> jax.Array:
  """`a @ b`, float32 `(M, N)`."""
  return _dot(a_MxK, b_KxN, (((1,), (0,)), ((), ())), precision)
