"""Cross-platform lowering of forward and backward kernels from a CPU-only machine.

Interpret mode ignores backend rules (Triton power-of-two sizes and 2-D dots, Mosaic block
shapes, unsupported primitives); lowering for "cuda" and "tpu" runs the real Pallas ->
Triton-IR / Mosaic lowering and catches them. It does not run Triton -> PTX or libtpu.
Triton lowers for an abstract H100 (`jax_compat.abstract_gpu`): jax 0.11 needs a target GPU.
"""
# pylint: disable=invalid-name

import contextlib
import warnings

import jax
import jax.numpy as jnp
import pytest

import pallas_kernels
from pallas_kernels import jax_compat
from pallas_kernels.block_sparse_attention import base

_CUSTOM_CALL = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}
_IMPLEMENTATION = {"cuda": "pallas_triton", "tpu": "pallas_mosaic_tpu"}
# Kernel launches: the forward alone; forward, dQ and dK/dV for the VJP.
_LAUNCHES = {"forward": 1, "vjp": 3}


def _lower(platform, mode, *, dtype, block_size, D, L):
  K = min(24, (L // block_size) ** 2)
  shapes = base.argument_shapes(batch=2, heads=2, length=L, head_dim=D, num_tiles=K, dtype=dtype)
  attend = lambda q, k, v, ids, valid, m0, l0, acc0: pallas_kernels.block_sparse_attention(
    q,
    k,
    v,
    ids,
    valid,
    m0,
    l0,
    acc0,
    block_size=block_size,
    # interpret=None: decided by the lowering platform, so the kernels lower for real.
    implementation=_IMPLEMENTATION[platform],
  )

  def vjp(q, k, v, ids, valid, m0, l0, acc0):
    outs, pullback = jax.vjp(
      lambda q, k, v, l0, acc0: attend(q, k, v, ids, valid, m0, l0, acc0), q, k, v, l0, acc0
    )
    return pullback(outs)

  fn = attend if mode == "forward" else vjp
  target = jax_compat.abstract_gpu() if platform == "cuda" else contextlib.nullcontext()
  with target:
    return jax.jit(fn).trace(*shapes).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("mode", ["forward", "vjp"])
@pytest.mark.parametrize(
  "platform, dtype, block_size, D, L",
  [
    ("cuda", jnp.bfloat16, 32, 64, 384),  # L, Nq + 1 not powers of two: only blocks, no loads
    ("cuda", jnp.float32, 64, 128, 512),
    ("cuda", jnp.bfloat16, 64, 40, 512),  # D not a power of two: padded to 64
    ("tpu", jnp.bfloat16, 32, 64, 384),
    ("tpu", jnp.float32, 64, 128, 512),
    ("tpu", jnp.bfloat16, 128, 64, 512),
  ],
)
def test_lowers_to_backend_custom_calls(platform, mode, dtype, block_size, D, L):
  text = _lower(platform, mode, dtype=dtype, block_size=block_size, D=D, L=L)
  assert text.count(_CUSTOM_CALL[platform]) == _LAUNCHES[mode], text[:2000]


_NO_DEPRECATION = pytest.mark.skipif(
  not jax_compat.TRITON_NEEDS_ABSTRACT_GPU, reason="jax < 0.11 does not deprecate Pallas Triton"
)


@_NO_DEPRECATION
def test_triton_lowering_warns_without_the_filter():
  # What the filter below is for: jax's warning, with the message the filter matches.
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    _lower("cuda", "forward", dtype=jnp.float32, block_size=32, D=64, L=320)
  messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
  assert any(m.startswith(jax_compat.TRITON_DEPRECATION_MESSAGE) for m in messages), messages


@_NO_DEPRECATION
def test_triton_deprecation_is_filtered_by_message():
  # pytest re-enables DeprecationWarnings per test; the filter jax_compat installs hides exactly
  # jax's Triton message (and setup.cfg's filterwarnings does the same for the suite).
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    jax_compat.ignore_triton_deprecation()
    _lower("cuda", "forward", dtype=jnp.bfloat16, block_size=32, D=64, L=256)
  assert not [w for w in caught if jax_compat.TRITON_DEPRECATION_MESSAGE in str(w.message)]


def test_abstract_gpu_rejects_an_empty_kind():
  with pytest.raises(ValueError, match="device_kind=''"):
    with jax_compat.abstract_gpu(""):
      pass
