"""The entry point: "auto" resolution, `interpret` defaults, and bad input named up front."""
# pylint: disable=invalid-name

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

import pallas_kernels
from pallas_kernels.block_sparse_attention import api, base
from tests.pallas_kernels.block_sparse_attention import contract

_SMALL = contract.Case(H=1, Lq=64, Lk=64, D=16, pad=(10,))


@pytest.mark.parametrize(
  "platform, expected",
  [
    ("gpu", "pallas_triton"),
    ("cuda", "pallas_triton"),
    ("rocm", "pallas_triton"),
    ("tpu", "pallas_mosaic_tpu"),
    ("cpu", "xla_chunked"),
  ],
)
def test_auto_picks_the_platforms_implementation(platform, expected, monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: platform)
  assert api.resolve_implementation("auto") == expected


@pytest.mark.parametrize("name", sorted(api.IMPLEMENTATIONS))
def test_names_resolve_to_themselves(name):
  assert api.resolve_implementation(name) == name


def test_auto_on_cpu_computes_what_xla_chunked_does():
  args, _ = contract.inputs(_SMALL)
  auto = api.block_sparse_attention(*args, block_size=32)
  chunked = api.block_sparse_attention(*args, block_size=32, implementation="xla_chunked")
  for got, want in zip(auto, chunked):
    np.testing.assert_array_equal(got, want)


def test_pallas_interprets_by_default_off_its_device():
  # On CPU, interpret=None means interpret mode: the kernels run and match the reference.
  args, _ = contract.inputs(_SMALL)
  out, lse = jax.jit(
    lambda *a: api.block_sparse_attention(*a, block_size=32, implementation="pallas_triton")
  )(*args)
  ref_out, ref_lse = base.block_sparse_attention_reference(*args, block_size=32)
  contract.assert_close(out, ref_out, jnp.float32, "out")
  contract.assert_close(lse, ref_lse, jnp.float32, "lse")


def test_package_reexports_the_op():
  assert pallas_kernels.block_sparse_attention is api.block_sparse_attention
  assert pallas_kernels.IMPLEMENTATIONS is api.IMPLEMENTATIONS
  assert pallas_kernels.DEFAULT_EPS == base.DEFAULT_EPS


_GOOD = contract.Case(H=2, Lq=64, Lk=64, D=16, pad=(0,))
_BAD_ARRAYS = [
  (0, jnp.zeros((1, 2, 64)), "q_BxHxLqxD"),
  (1, jnp.zeros((1, 2, 64, 8)), "k_BxHxLkxD"),
  (2, jnp.zeros((1, 2, 32, 16)), "v_BxHxLkxD"),
  (0, jnp.zeros((1, 2, 64, 16), jnp.int32), "q_BxHxLqxD"),
  (1, jnp.zeros((1, 2, 64, 16), jnp.bfloat16), "k_BxHxLkxD"),
  (3, jnp.zeros((1, 2, 2), jnp.float32), "tile_ids_BxHxK"),
  (3, jnp.zeros((1, 2, 5), jnp.int32), "tile_ids_BxHxK"),
  (4, jnp.ones((1, 32), bool), "key_valid_BxLk"),
  (5, jnp.zeros((1, 2, 32)), "m0_BxHxLq"),
  (6, jnp.zeros((2, 2, 64)), "l0_BxHxLq"),
  (7, jnp.zeros((1, 2, 64, 8)), "acc0_BxHxLqxD"),
]


@pytest.mark.parametrize("implementation", sorted(api.IMPLEMENTATIONS))
@pytest.mark.parametrize("index, bad, arg_name", _BAD_ARRAYS)
def test_bad_arrays_raise_naming_the_argument(implementation, index, bad, arg_name):
  args, _ = contract.inputs(_GOOD)
  args = args[:index] + (bad,) + args[index + 1 :]
  with pytest.raises(ValueError, match=arg_name):
    api.block_sparse_attention(*args, block_size=32, implementation=implementation)


@pytest.mark.parametrize(
  "implementation, block_size",
  [("pallas_triton", 16), ("pallas_triton", 128), ("pallas_mosaic_tpu", 16)],
)
def test_block_size_an_implementation_cannot_take_raises(implementation, block_size):
  args, _ = contract.inputs(_GOOD)
  with pytest.raises(ValueError, match=f"block_size.*{implementation}.*block_size={block_size}"):
    api.block_sparse_attention(*args, block_size=block_size, implementation=implementation)


@pytest.mark.parametrize("implementation", sorted(api.IMPLEMENTATIONS))
def test_length_not_a_multiple_of_the_block_raises(implementation):
  args, _ = contract.inputs(contract.Case(H=1, Lq=96, Lk=96, D=16, pad=(0,)))
  with pytest.raises(ValueError, match="block_size=64"):
    api.block_sparse_attention(*args, block_size=64, implementation=implementation)


@pytest.mark.parametrize(
  "options, match",
  [
    (dict(implementation="triton"), "implementation='triton'"),
    (dict(implementation="pallas"), "implementation='pallas'"),
    (dict(implementation="xla_chunked", interpret=True), "interpret=True"),
    (dict(implementation="reference", interpret=False), "interpret=False"),
    (dict(implementation="pallas_triton", interpret=pltpu.InterpretParams()), "interpret="),
    (dict(implementation="pallas_mosaic_tpu", interpret="yes"), "interpret='yes'"),
    (dict(implementation="xla_chunked", block_size=0), "block_size=0"),
    (dict(implementation="xla_chunked", precision="tf32"), "precision='tf32'"),
    (dict(implementation="reference", precision="float32"), "precision='float32'"),
    (dict(implementation="pallas_mosaic_tpu", precision="bf16x3"), "precision='bf16x3'"),
    (dict(implementation="pallas_triton", precision="fp32"), "precision='fp32'"),
  ],
)
def test_bad_options_raise_naming_the_option(options, match):
  args, _ = contract.inputs(_GOOD)
  options.setdefault("block_size", 32)
  with pytest.raises(ValueError, match=match):
    api.block_sparse_attention(*args, **options)


def test_precision_reaches_the_triton_kernels():
  # One bf16 pass is visibly coarser than IEEE float32; the entry point passes the choice on.
  args, _ = contract.inputs(_SMALL)
  attend = lambda precision: api.block_sparse_attention(
    *args, block_size=32, implementation="pallas_triton", interpret=True, precision=precision
  )[0]
  ref_out, _ = base.block_sparse_attention_reference(*args, block_size=32)
  err = lambda out: float(jnp.max(jnp.abs(out - ref_out)))
  assert err(attend("float32")) < 1e-5 < 1e-4 < err(attend("bf16"))
