"""The op and `mra_attention` on batch- and head-sharded inputs: each device runs its shard.

Numerics on the 4 simulated CPU devices (tests/conftest.py): sharded equals unsharded, forward
and gradient, on Auto and Explicit meshes. Deviceless compiles for 4 H100s and a v5e 2x2 TPU
host: each kernel's custom call sees only its device's rows, and no all-gather feeds it.
"""
# pylint: disable=invalid-name

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import mra_jax
from pallas_kernels import compile_only
from pallas_kernels.block_sparse_attention import api

_CUSTOM_CALL = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}
_IMPLEMENTATION = {"cuda": "pallas_triton", "tpu": "pallas_mosaic_tpu"}
# The op's operands: which of them lead with (batch, heads) and which with batch only.
_KEY_VALID = 4


def _operands(B=4, H=2, L=64, D=16, block_size=32, seed=0):
  rng = np.random.default_rng(seed)
  N = L // block_size
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  tiles = np.stack([np.sort(rng.choice(N * N, size=3, replace=False)) for _ in range(B * H)])
  valid = np.arange(L)[None, :] < np.array([L, L - 10, L // 2, 5] * B)[:B, None]
  m0 = jnp.broadcast_to(jnp.where(jnp.arange(L) % 2 == 0, 0.5, -jnp.inf), (B, H, L))
  return (
    normal(B, H, L, D),
    normal(B, H, L, D),
    normal(B, H, L, D),
    jnp.asarray(tiles.reshape(B, H, 3), jnp.int32),
    jnp.asarray(valid),
    m0,
    jnp.abs(normal(B, H, L)),
    normal(B, H, L, D),
  )


def _loss_and_grads(implementation, block_size=32, interpret=None):
  def loss(q, k, v, ids, valid, m0, l0, acc0):
    out, lse = api.block_sparse_attention(
      q,
      k,
      v,
      ids,
      valid,
      m0,
      l0,
      acc0,
      block_size=block_size,
      implementation=implementation,
      interpret=interpret,
    )
    weights = jnp.linspace(-1.0, 1.0, out.shape[-1])
    return jnp.sum(out * weights[None, None, None]) + jnp.sum(jnp.sin(lse)), (out, lse)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 6, 7), has_aux=True))


def _place(args, mesh, batch, head):
  def spec(i, x):
    return P(batch) if i == _KEY_VALID else P(batch, head)

  return [jax.device_put(x, NamedSharding(mesh, spec(i, x))) for i, x in enumerate(args)]


_MESHES = {
  "batch": ((4,), ("data",), "data", None),
  "batch_x_heads": ((2, 2), ("data", "model"), "data", "model"),
}


_AUTO, _EXPLICIT = AxisType.Auto, AxisType.Explicit
_slow = pytest.mark.slow


@pytest.mark.parametrize(
  "implementation, axis_type, mesh_name",
  [
    ("pallas_triton", _AUTO, "batch_x_heads"),
    ("pallas_triton", _EXPLICIT, "batch_x_heads"),
    ("pallas_mosaic_tpu", _EXPLICIT, "batch_x_heads"),
    # Explicit axes forbid xla_chunked's loop over sharded heads without the shard_map.
    ("xla_chunked", _EXPLICIT, "batch_x_heads"),
    # The batch_x_heads cases split the batch too; these add little but time.
    pytest.param("pallas_triton", _AUTO, "batch", marks=_slow),
    pytest.param("pallas_triton", _EXPLICIT, "batch", marks=_slow),
    pytest.param("pallas_mosaic_tpu", _AUTO, "batch_x_heads", marks=_slow),
    pytest.param("pallas_mosaic_tpu", _EXPLICIT, "batch", marks=_slow),
    pytest.param("xla_chunked", _AUTO, "batch", marks=_slow),
    pytest.param("xla_chunked", _AUTO, "batch_x_heads", marks=_slow),
  ],
)
def test_sharded_equals_unsharded(implementation, axis_type, mesh_name):
  shape, names, batch, head = _MESHES[mesh_name]
  mesh = jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names))
  args = _operands()
  fn = _loss_and_grads(implementation)
  (loss, (out, lse)), grads = fn(*args)
  (s_loss, (s_out, s_lse)), s_grads = fn(*_place(args, mesh, batch, head))
  if implementation != "xla_chunked" or axis_type == AxisType.Explicit:
    # (On Auto axes XLA partitions xla_chunked itself and gathers sharded heads.)
    assert s_out.sharding.is_equivalent_to(NamedSharding(mesh, P(batch, head)), 4)
  for got, want in zip((s_loss, s_out, s_lse, *s_grads), (loss, out, lse, *grads)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_vmap_over_an_auto_sharded_call_folds_into_the_batch():
  # On Auto axes the kernels sit behind custom_partitioning, which has no batching rule
  # of its own; a vmapped axis must give what a loop gives.
  mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
  first, second = _operands(seed=1), _operands(seed=2)
  stacked = [jnp.stack(pair) for pair in zip(first, second)]
  placed = [jax.device_put(x, NamedSharding(mesh, P(None, "data"))) for x in stacked]
  fn = _loss_and_grads("pallas_triton")
  batched = jax.jit(jax.vmap(lambda *a: fn(*a)))(*placed)
  for index, args in enumerate((first, second)):
    expected = fn(*args)
    for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(expected)):
      np.testing.assert_allclose(got[index], want, rtol=1e-5, atol=1e-5)


# Deviceless compiles: global B=8, H=4, L=2048, D=64, bf16, batch split over 4 devices, so
# each kernel's leading axis (batch * heads) holds 8 * 4 / 4 = 8 rows.
_B, _H, _L, _D = 8, 4, 2048, 64
_LOCAL_ROWS = _B * _H // 4


def _devices(request, platform):
  """The 4 compile-only devices; skips (fails under CI) where the target is missing."""
  request.getfixturevalue("tpu_compile" if platform == "tpu" else "cuda_compile")
  return (
    compile_only.tpu_devices("v5e:2x2") if platform == "tpu" else compile_only.h100_devices("1x4x1")
  )


def _assert_local_kernels(compiled, platform, launches, local_batch):
  """Every kernel's operands and results lead with its device's rows: batch * heads, or
  batch alone (per-batch operands such as the key mask); none sees the global batch."""
  calls = compile_only.custom_calls(compiled, _CUSTOM_CALL[platform])
  assert len(calls) == launches, calls
  for call in calls:
    leading = {int(shape.split("[", 1)[1].split(",", 1)[0]) for shape in call.operands}
    leading |= {int(shape.split("[", 1)[1].split(",", 1)[0]) for shape in call.results}
    assert leading <= {_LOCAL_ROWS, local_batch}, call
    assert int(call.results[0].split("[", 1)[1].split(",", 1)[0]) == _LOCAL_ROWS, call
  assert compile_only.all_gathers(compiled) == 0


def _mra_value_and_grad(platform):
  def loss(q, k, v):
    out = mra_jax.mra_attention(q, k, v, impl=_IMPLEMENTATION[platform])
    return jnp.sum(out.astype(jnp.float32) ** 2)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


@pytest.fixture
def kernels_not_interpreted(monkeypatch):
  """`mra_attention` has no `interpret=`: make the Pallas default (interpret off-device) see
  the compile target's platform, so the kernels lower for real."""

  def set_platform(platform):
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu" if platform == "tpu" else "gpu")

  return set_platform


@pytest.mark.parametrize(
  "platform, axis_type",
  [
    ("cuda", AxisType.Auto),
    ("cuda", AxisType.Explicit),
    ("tpu", AxisType.Explicit),
  ],
  ids=["h100_auto", "h100_explicit", "v5e_explicit"],
)
def test_mra_attention_compiles_with_each_kernel_on_its_local_batch(
  request, platform, axis_type, kernels_not_interpreted
):
  kernels_not_interpreted(platform)
  mesh = jax.sharding.Mesh(_devices(request, platform), ("data",), axis_types=(axis_type,))
  x = jax.ShapeDtypeStruct((_B, _L, _H, _D), jnp.bfloat16, sharding=NamedSharding(mesh, P("data")))
  compiled = _mra_value_and_grad(platform).trace(x, x, x).lower().compile()
  # Forward, dQ and dK/dV: the forward's repeat in the Auto backward is merged away.
  _assert_local_kernels(compiled, platform, launches=3, local_batch=_B // 4)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_op_compiles_on_batch_x_heads_shards(request, platform):
  # The op alone, batch over 2 devices and heads over 2: still B*H/4 rows per kernel.
  devices = np.array(_devices(request, platform)).reshape(2, 2)
  axis_type = AxisType.Auto if platform == "cuda" else AxisType.Explicit
  mesh = jax.sharding.Mesh(devices, ("data", "model"), axis_types=(axis_type,) * 2)
  L, N = 512, 512 // 32
  sds = lambda shape, dtype, spec: jax.ShapeDtypeStruct(
    shape, dtype, sharding=NamedSharding(mesh, spec)
  )
  bh = P("data", "model")
  args = (
    sds((_B, _H, L, _D), jnp.bfloat16, bh),
    sds((_B, _H, L, _D), jnp.bfloat16, bh),
    sds((_B, _H, L, _D), jnp.bfloat16, bh),
    sds((_B, _H, 4 * N), jnp.int32, bh),
    sds((_B, L), jnp.bool_, P("data")),
    sds((_B, _H, L), jnp.float32, bh),
    sds((_B, _H, L), jnp.float32, bh),
    sds((_B, _H, L, _D), jnp.float32, bh),
  )
  fn = _loss_and_grads(_IMPLEMENTATION[platform], interpret=False)
  compiled = fn.trace(*args).lower().compile()
  _assert_local_kernels(compiled, platform, launches=3, local_batch=_B // 2)


def test_mosaic_on_auto_axes_still_asks_for_shard_map(request, kernels_not_interpreted):
  # jax has no custom_partitioning on TPU: Auto axes there need Explicit ones or a shard_map.
  kernels_not_interpreted("tpu")
  mesh = jax.sharding.Mesh(_devices(request, "tpu"), ("data",), axis_types=(AxisType.Auto,))
  x = jax.ShapeDtypeStruct((_B, 256, _H, _D), jnp.bfloat16, sharding=NamedSharding(mesh, P("data")))
  fn = jax.jit(lambda q, k, v: mra_jax.mra_attention(q, k, v, impl="pallas_mosaic_tpu"))
  with pytest.raises(NotImplementedError, match="shard_map"):
    fn.trace(x, x, x).lower()
