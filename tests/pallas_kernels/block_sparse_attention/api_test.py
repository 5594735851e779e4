"""The entry point: "auto" resolution, implementations as instances, bad input named up front."""
# pylint: disable=invalid-name

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

import pallas_kernels
from pallas_kernels import jax_compat
from pallas_kernels.block_sparse_attention import api, base, xla_chunked
from pallas_kernels.block_sparse_attention.pallas_mosaic_tpu import PallasMosaicTpu
from pallas_kernels.block_sparse_attention.pallas_triton import PallasTriton
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
def test_auto_picks_the_platforms_implementation(platform, expected):
  assert api.resolve_implementation("auto", platform) == expected


@pytest.mark.parametrize("name", sorted(api.IMPLEMENTATIONS))
def test_each_name_runs_the_implementation_of_that_name(name):
  # The registry's key and the instance's own NAME (its messages, its block sizes) agree.
  assert api.IMPLEMENTATIONS[name].NAME == name
  assert api.resolve_implementation(api.IMPLEMENTATIONS[name]) == name


def _traced_platform(x):
  platforms = []
  jax.jit(lambda x: platforms.append(api.platform_of(x)) or x).trace(x)
  return platforms[0]


def test_platform_of_reads_devices_then_the_mesh_in_sight():
  x = jnp.zeros((4, 2))
  assert api.platform_of(x) == "cpu"  # a concrete array: its devices
  assert _traced_platform(x) == "cpu"  # traced, no mesh: jax's default backend
  # A mesh context shows its devices' platform while tracing (here an abstract H100).
  with jax_compat.abstract_gpu():
    assert _traced_platform(jax.ShapeDtypeStruct((4, 2), jnp.float32)) == "cuda"


def test_auto_on_a_gpu_mesh_lowers_the_triton_kernels():
  # "auto" under an abstract GPU: the op's forward lowers to one Triton call, not XLA ops.
  shapes = base.argument_shapes(
    batch=1, heads=1, length=64, head_dim=16, num_tiles=2, dtype=jnp.bfloat16
  )
  attend = lambda *args: api.block_sparse_attention(*args, block_size=32)
  with jax_compat.abstract_gpu():
    text = jax.jit(attend).trace(*shapes).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("__gpu$xla.gpu.triton") == 1


def test_auto_on_cpu_computes_what_xla_chunked_does():
  args, _ = contract.inputs(_SMALL)
  auto = api.block_sparse_attention(*args, block_size=32)
  chunked = api.block_sparse_attention(*args, block_size=32, implementation="xla_chunked")
  for got, want in zip(auto, chunked):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["pallas_triton", "pallas_mosaic_tpu"])
def test_pallas_interprets_by_default_off_its_device(name):
  # On CPU, interpret=None lowers the interpreter: the kernels run and match the reference.
  args, _ = contract.inputs(_SMALL)
  out, lse = jax.jit(lambda *a: api.block_sparse_attention(*a, block_size=32, implementation=name))(
    *args
  )
  ref_out, ref_lse = base.block_sparse_attention_reference(*args, block_size=32)
  contract.assert_close(out, ref_out, jnp.float32, "out")
  contract.assert_close(lse, ref_lse, jnp.float32, "lse")


def test_arrays_are_checked_once_before_the_implementation(monkeypatch):
  calls = []
  check = base.check_inputs
  monkeypatch.setattr(base, "check_inputs", lambda *a, **k: calls.append(1) or check(*a, **k))
  args, _ = contract.inputs(_SMALL)
  jax.grad(lambda q: api.block_sparse_attention(q, *args[1:], block_size=32)[0].sum())(args[0])
  assert len(calls) == 1


def test_package_reexports_the_op():
  assert pallas_kernels.block_sparse_attention is api.block_sparse_attention
  assert pallas_kernels.IMPLEMENTATIONS is api.IMPLEMENTATIONS
  assert pallas_kernels.DEFAULT_EPS == base.DEFAULT_EPS


_GOOD = contract.Case(H=2, Lq=64, Lk=64, D=16, pad=(0,))
_BAD_ARRAYS = [
  (0, jnp.zeros((1, 2, 64)), "q_BxHxLqxD"),
  (1, jnp.zeros((1, 2, 64, 8)), "k_BxHkxLkxD"),
  (2, jnp.zeros((1, 2, 32, 16)), "v_BxHkxLkxD"),
  (0, jnp.zeros((1, 2, 64, 16), jnp.int32), "q_BxHxLqxD"),
  (1, jnp.zeros((1, 2, 64, 16), jnp.bfloat16), "k_BxHkxLkxD"),
  # Grouped-query attention: kv heads must divide the query heads.
  (1, jnp.zeros((1, 3, 64, 16)), r"k_BxHkxLkxD's heads must divide .* Hk=3 \(k\), H=2"),
  (3, jnp.zeros((1, 2, 2), jnp.float32), "tile_ids_BxHkxK"),
  (3, jnp.zeros((1, 2, 5), jnp.int32), "tile_ids_BxHkxK"),
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


def test_tile_ids_per_query_head_with_fewer_kv_heads_raise():
  # 4 query heads on 2 kv heads: tile lists are per kv head, (B, 2, K).
  args, _ = contract.inputs(contract.Case(H=4, Hk=2, Lq=64, Lk=64, D=16, pad=(0,)))
  args = list(args)
  args[3] = jnp.zeros((1, 4, 2), jnp.int32)
  with pytest.raises(ValueError, match=r"tile_ids_BxHkxK must be .*\(1, 2, K\).*one tile list per"):
    api.block_sparse_attention(*args, block_size=32)


@pytest.mark.parametrize("implementation", sorted(api.IMPLEMENTATIONS))
def test_causal_needs_equal_lengths_naming_both(implementation):
  args, _ = contract.inputs(contract.Case(H=1, Lq=64, Lk=128, D=16, pad=(0,)))
  with pytest.raises(ValueError, match=r"causal=True .* Lq=64 \(q\), Lk=128 \(k\)"):
    api.block_sparse_attention(*args, block_size=32, causal=True, implementation=implementation)


def test_causal_must_be_a_bool():
  args, _ = contract.inputs(_GOOD)
  with pytest.raises(ValueError, match="causal='yes'"):
    api.block_sparse_attention(*args, block_size=32, causal="yes")


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
    (dict(implementation=xla_chunked.XlaChunked), "implementation=<class"),
    (dict(implementation="xla_chunked", block_size=0), "block_size=0"),
    # precision= with an implementation that takes none names both.
    (dict(implementation="xla_chunked", precision="tf32"), "precision='tf32'.*'xla_chunked'"),
    (dict(implementation="reference", precision="float32"), "precision='float32'.*'reference'"),
    (
      dict(implementation=PallasMosaicTpu(interpret=True), precision="bf16x3"),
      "precision='bf16x3'.*'pallas_mosaic_tpu'",
    ),
    (dict(implementation="pallas_triton", precision="fp32"), "precision='fp32'"),
  ],
)
def test_bad_options_raise_naming_the_option(options, match):
  args, _ = contract.inputs(_GOOD)
  options.setdefault("block_size", 32)
  with pytest.raises(ValueError, match=match):
    api.block_sparse_attention(*args, **options)


@pytest.mark.parametrize(
  "build, match",
  [
    (lambda: PallasTriton(interpret=pltpu.InterpretParams()), "interpret="),
    (lambda: PallasTriton(interpret=1), "interpret=1"),
    (lambda: PallasMosaicTpu(interpret="yes"), "interpret='yes'"),
    (lambda: PallasMosaicTpu(index_chunk=0), "index_chunk=0"),
    (lambda: PallasMosaicTpu(index_chunk=True), "index_chunk=True"),
    (lambda: xla_chunked.XlaChunked(chunk_bytes=2.5), "chunk_bytes=2.5"),
  ],
)
def test_bad_implementation_options_raise_when_built(build, match):
  with pytest.raises(ValueError, match=match):
    build()


def test_precision_replaces_the_instances_own():
  # The keyword builds the implementation with that precision, keeping its other fields.
  args, _ = contract.inputs(_SMALL)
  attend = lambda implementation, **kw: api.block_sparse_attention(
    *args, block_size=32, implementation=implementation, **kw
  )[0]
  interpreted = PallasTriton(precision="bf16", interpret=True)
  np.testing.assert_array_equal(
    attend(interpreted, precision="float32"),
    attend(PallasTriton(precision="float32", interpret=True)),
  )


def test_precision_reaches_the_triton_kernels():
  # One bf16 pass is visibly coarser than IEEE float32; the entry point passes the choice on.
  args, _ = contract.inputs(_SMALL)
  attend = lambda precision: api.block_sparse_attention(
    *args, block_size=32, implementation="pallas_triton", precision=precision
  )[0]
  ref_out, _ = base.block_sparse_attention_reference(*args, block_size=32)
  err = lambda out: float(jnp.max(jnp.abs(out - ref_out)))
  assert err(attend("float32")) < 1e-5 < 1e-4 < err(attend("bf16"))
