"""The op and `mra_attention` on batch- and head-sharded inputs: each device runs its shard.

Numerics on the 4 simulated CPU devices (tests/conftest.py): sharded equals unsharded, forward
and gradient, on Auto and Explicit meshes, and on the Mosaic kernels' path for Auto axes
(data-parallel specs assumed; it runs wherever those kernels do, interpret mode here).
Deviceless compiles for 4 H100s and a v5e 2x2 TPU host, of the op and of `mra_attention` as
a user calls them: each kernel's custom call sees only its device's rows, and no all-gather
feeds it.
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
from pallas_kernels.block_sparse_attention import api, sharding
from pallas_kernels.block_sparse_attention.pallas_mosaic_tpu import PallasMosaicTpu

_CUSTOM_CALL = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}
_IMPLEMENTATION = {"cuda": "pallas_triton", "tpu": "pallas_mosaic_tpu"}
# The op's operands: which of them lead with (batch, heads) and which with batch only.
_KEY_VALID = 4


def _operands(B=4, H=2, L=64, D=16, block_size=32, seed=0, Hk=None):
  """The op's arrays; `Hk` kv heads (default H), 3 random tiles per kv head (for a causal
  op: (0, 0), (1, 0), (1, 1), the lower triangle of a 2 x 2 grid)."""
  rng = np.random.default_rng(seed)
  N = L // block_size
  Hk = H if Hk is None else Hk
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  tiles = np.stack([np.sort(rng.choice(N * N, size=3, replace=False)) for _ in range(B * Hk)])
  valid = np.arange(L)[None, :] < np.array([L, L - 10, L // 2, 5] * B)[:B, None]
  m0 = jnp.broadcast_to(jnp.where(jnp.arange(L) % 2 == 0, 0.5, -jnp.inf), (B, H, L))
  return (
    normal(B, H, L, D),
    normal(B, Hk, L, D),
    normal(B, Hk, L, D),
    jnp.asarray(tiles.reshape(B, Hk, 3), jnp.int32),
    jnp.asarray(valid),
    m0,
    jnp.abs(normal(B, H, L)),
    normal(B, H, L, D),
  )


def _loss_and_grads(implementation, block_size=32, causal=False):
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
      causal=causal,
      implementation=implementation,
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
    pytest.param("pallas_triton", _EXPLICIT, "batch_x_heads", marks=_slow),
    pytest.param("pallas_mosaic_tpu", _EXPLICIT, "batch_x_heads", marks=_slow),
    # Explicit axes forbid xla_chunked's loop over sharded heads without the shard_map.
    ("xla_chunked", _EXPLICIT, "batch_x_heads"),
    # The batch_x_heads cases split the batch too; these add little but time.
    pytest.param("pallas_triton", _AUTO, "batch", marks=_slow),
    pytest.param("pallas_triton", _EXPLICIT, "batch", marks=_slow),
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


@pytest.mark.parametrize(
  "implementation, axis_type",
  [
    pytest.param("pallas_triton", _AUTO, marks=_slow),
    ("pallas_mosaic_tpu", _AUTO),
    ("xla_chunked", _EXPLICIT),
  ],
)
def test_grouped_causal_sharded_equals_unsharded(implementation, axis_type):
  # 4 query heads on 2 kv heads, causal, over a 2x2 data x heads mesh: each device holds one
  # kv head and its two query heads, and computes what one device computes.
  mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(axis_type,) * 2)
  args = list(_operands(H=4, Hk=2))
  args[3] = jnp.broadcast_to(jnp.asarray([0, 2, 3], jnp.int32), args[3].shape)
  fn = _loss_and_grads(implementation, causal=True)
  expected = fn(*args)
  got = fn(*_place(args, mesh, "data", "model"))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "shape, H, Hk, spec, expected",
  [
    # The heads axis divides Hk: q and k/v split over it.
    ((2, 2), 4, 2, P("data", "model"), [("data",), ("model",)]),
    # It divides H = 4 but not Hk = 1: heads are gathered, k/v with them.
    ((2, 2), 4, 1, P("data", "model"), [("data",), None]),
  ],
)
def test_heads_split_only_over_axes_that_divide_the_kv_heads(shape, H, Hk, spec, expected):
  mesh = jax.sharding.AbstractMesh(shape, ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
  assert sharding._batch_and_head_axes(spec, mesh, (4, H, 64, 16), Hk) == expected


def _is_shard_mapped(fn, *args):
  return "shard_map" in str(jax.make_jaxpr(fn)(*args))


@_slow
@pytest.mark.parametrize("implementation", ["pallas_triton", "pallas_mosaic_tpu"])
def test_vmap_over_an_auto_sharded_call_folds_into_the_batch(implementation):
  # On Auto axes the Triton kernels sit behind custom_partitioning, which has no batching
  # rule of its own, and the Mosaic ones behind a shard_map; a vmapped axis must give what
  # a loop gives.
  mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
  first, second = _operands(seed=1), _operands(seed=2)
  stacked = [jnp.stack(pair) for pair in zip(first, second)]
  placed = [jax.device_put(x, NamedSharding(mesh, P(None, "data"))) for x in stacked]
  fn = _loss_and_grads(implementation)
  vmapped = jax.vmap(lambda *a: fn(*a))
  if implementation == "pallas_mosaic_tpu":
    assert _is_shard_mapped(vmapped, *placed)
  batched = jax.jit(vmapped)(*placed)
  for index, args in enumerate((first, second)):
    expected = fn(*args)
    for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(expected)):
      np.testing.assert_allclose(got[index], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "shape, names, batch, head, B, assumed",
  [
    # Placed as assumed: batch over the whole mesh.
    ((4,), ("data",), "data", None, 4, P("data")),
    # Placed over "data" only, assumed over ("data", "model"): XLA reshards to the assumption.
    pytest.param((2, 2), ("data", "model"), "data", None, 4, P(("data", "model")), marks=_slow),
    # Placed as batch x heads, but B=4 fills the whole mesh: assumed batch-only, resharded.
    pytest.param((2, 2), ("data", "model"), "data", "model", 4, P(("data", "model")), marks=_slow),
    # B=2 fills "data" only, so the heads take "model"; placed as a data x heads program.
    pytest.param((2, 2), ("data", "model"), "data", "model", 2, P("data", "model"), marks=_slow),
  ],
  ids=["batch", "batch_on_one_of_two_axes", "batch_x_heads_as_batch", "batch_then_heads"],
)
def test_mosaic_on_auto_axes_equals_unsharded(shape, names, batch, head, B, assumed):
  mesh = jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))
  args = _operands(B=B)
  fn = _loss_and_grads(PallasMosaicTpu(interpret=True))
  (loss, (out, lse)), grads = fn(*args)
  placed = _place(args, mesh, batch, head)
  assert _is_shard_mapped(fn, *placed)
  (s_loss, (s_out, s_lse)), s_grads = fn(*placed)
  assert s_out.sharding.is_equivalent_to(NamedSharding(mesh, assumed), 4)
  for got, want in zip((s_loss, s_out, s_lse, *s_grads), (loss, out, lse, *grads)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_mesh_context_puts_the_mesh_in_sight():
  # Fresh (uncommitted) inputs: only `jax.set_mesh` shows the mesh; without it, no shard_map.
  mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
  args = _operands()
  fn = _loss_and_grads(PallasMosaicTpu(interpret=True))
  assert not _is_shard_mapped(fn, *args)
  with jax.set_mesh(mesh):
    assert _is_shard_mapped(fn, *args)


@pytest.mark.parametrize(
  "shape, B, H, batch, head",
  [
    ((4,), 8, 4, ("data",), None),
    ((4,), 2, 4, None, ("data",)),
    ((4,), 2, 2, None, None),
    ((2, 2), 8, 4, ("data", "model"), None),
    ((2, 2), 2, 4, ("data",), ("model",)),
    ((2, 2), 6, 3, ("data",), None),
    ((2, 2), 3, 2, None, ("data",)),
  ],
)
def test_data_parallel_axes_fill_batch_then_heads_in_mesh_order(shape, B, H, batch, head):
  names = ("data", "model")[: len(shape)]
  mesh = jax.sharding.AbstractMesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))
  assert sharding._data_parallel_axes(mesh, (B, H, 64, 16)) == [batch, head]


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


def _assert_local_kernels(compiled, platform, launches, local_batch, local_rows=_LOCAL_ROWS):
  """Every kernel's operands and results lead with its device's rows: batch * heads, or
  batch alone (per-batch operands such as the key mask); none sees the global batch."""
  calls = compile_only.custom_calls(compiled, _CUSTOM_CALL[platform])
  assert len(calls) == launches, calls
  for call in calls:
    leading = {int(shape.split("[", 1)[1].split(",", 1)[0]) for shape in call.operands}
    leading |= {int(shape.split("[", 1)[1].split(",", 1)[0]) for shape in call.results}
    assert leading <= {local_rows, local_batch}, call
    assert int(call.results[0].split("[", 1)[1].split(",", 1)[0]) == local_rows, call
  assert compile_only.all_gathers(compiled) == 0
  return calls


def _mra_value_and_grad(impl):
  def loss(q, k, v):
    out = mra_jax.mra_attention(q, k, v, impl=impl)
    return jnp.sum(out.astype(jnp.float32) ** 2)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


@pytest.mark.parametrize(
  "platform, axis_type",
  [
    ("cuda", AxisType.Auto),
    pytest.param("cuda", AxisType.Explicit, marks=_slow),
    pytest.param("tpu", AxisType.Explicit, marks=_slow),
    # No custom_partitioning on TPU: a shard_map with the batch over the mesh, assumed.
    ("tpu", AxisType.Auto),
  ],
  ids=["h100_auto", "h100_explicit", "v5e_explicit", "v5e_auto"],
)
def test_mra_attention_compiles_with_each_kernel_on_its_local_batch(request, platform, axis_type):
  mesh = jax.sharding.Mesh(_devices(request, platform), ("data",), axis_types=(axis_type,))
  x = jax.ShapeDtypeStruct((_B, _L, _H, _D), jnp.bfloat16, sharding=NamedSharding(mesh, P("data")))
  # "auto" resolves from the mesh's devices, and the kernels compile (not interpret) because
  # the program is lowered for their platform.
  compiled = compile_only.compile(_mra_value_and_grad("auto").trace(x, x, x).lower())
  # Forward, dQ and dK/dV: the forward's repeat in the Auto backward is merged away.
  _assert_local_kernels(compiled, platform, launches=3, local_batch=_B // 4)


@pytest.mark.parametrize("causal, group", [(False, 1), (True, 2)], ids=["", "causal_gqa"])
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_op_compiles_on_batch_x_heads_shards(request, platform, causal, group):
  # The op alone, batch over 2 devices and kv heads over 2: still B*Hk/4 rows per kernel.
  # Causal with 2 query heads per kv head too: each device's kernels hold its kv heads'
  # whole groups.
  devices = np.array(_devices(request, platform)).reshape(2, 2)
  axis_type = AxisType.Auto if platform == "cuda" else AxisType.Explicit
  mesh = jax.sharding.Mesh(devices, ("data", "model"), axis_types=(axis_type,) * 2)
  L, N, H = 512, 512 // 32, _H * group
  sds = lambda shape, dtype, spec: jax.ShapeDtypeStruct(
    shape, dtype, sharding=NamedSharding(mesh, spec)
  )
  bh = P("data", "model")
  args = (
    sds((_B, H, L, _D), jnp.bfloat16, bh),
    sds((_B, _H, L, _D), jnp.bfloat16, bh),
    sds((_B, _H, L, _D), jnp.bfloat16, bh),
    sds((_B, _H, 4 * N), jnp.int32, bh),
    sds((_B, L), jnp.bool_, P("data")),
    sds((_B, H, L), jnp.float32, bh),
    sds((_B, H, L), jnp.float32, bh),
    sds((_B, H, L, _D), jnp.float32, bh),
  )
  fn = _loss_and_grads(_IMPLEMENTATION[platform], causal=causal)
  compiled = compile_only.compile(fn.trace(*args).lower())
  calls = _assert_local_kernels(compiled, platform, launches=3, local_batch=_B // 2)
  # The query side's rows: each kv head's group stacked, `group` times the length.
  assert any(f"bf16[{_LOCAL_ROWS},{L * group},{_D}]" in call.operands for call in calls), calls


@_slow
def test_mosaic_forward_on_auto_axes_compiles_on_the_local_batch(request):
  # On TPU custom_partitioning never reaches the compiler; the op assumes data parallelism.
  mesh = jax.sharding.Mesh(_devices(request, "tpu"), ("data",), axis_types=(AxisType.Auto,))
  x = jax.ShapeDtypeStruct((_B, _L, _H, _D), jnp.bfloat16, sharding=NamedSharding(mesh, P("data")))
  fn = jax.jit(lambda q, k, v: mra_jax.mra_attention(q, k, v, impl="pallas_mosaic_tpu"))
  calls = _assert_local_kernels(
    compile_only.compile(fn.trace(x, x, x).lower()), "tpu", launches=1, local_batch=_B // 4
  )
  assert f"bf16[{_LOCAL_ROWS},{_L},{_D}]" in calls[0].operands, calls


@pytest.mark.parametrize(
  "mesh_shape, names, placed, local_batch",
  [
    # B=2 fills "data"; the heads go over "model".
    pytest.param((2, 2), ("data", "model"), P("data"), 1, marks=_slow),
    # 4 devices do not divide B=2: the heads go over the whole mesh (the caller's replicated
    # inputs are sliced where they are, not communicated).
    ((4,), ("data",), P(), 2),
  ],
  ids=["batch_then_heads", "heads"],
)
def test_mosaic_on_auto_axes_splits_the_heads_when_the_batch_runs_out(
  request, mesh_shape, names, placed, local_batch
):
  devices = np.array(_devices(request, "tpu")).reshape(mesh_shape)
  mesh = jax.sharding.Mesh(devices, names, axis_types=(AxisType.Auto,) * len(names))
  B = 2
  x = jax.ShapeDtypeStruct((B, _L, _H, _D), jnp.bfloat16, sharding=NamedSharding(mesh, placed))
  compiled = compile_only.compile(_mra_value_and_grad("pallas_mosaic_tpu").trace(x, x, x).lower())
  local_rows = B * _H // 4
  calls = _assert_local_kernels(compiled, "tpu", 3, local_batch, local_rows=local_rows)
  for call in calls:
    assert f"bf16[{local_rows},{_L},{_D}]" in call.operands, call
