"""Runs the block-sparse attention op on each device's own batches and heads.

Every (batch, head) of the op is independent, so a program sharded over batch and heads
needs no communication in it, provided each device runs the implementation on its own
rows. XLA cannot see that inside a kernel: a Mosaic call cannot be partitioned at all, and
a Triton call runs whole on every device behind all-gathers of its operands. `run_per_shard`
splits the call by what is known when the op is traced:

* Explicit mesh axes (`jax.make_mesh`'s default; the sharding is in the arrays' types):
  a `jax.shard_map` over the whole mesh, batch and heads split as the queries are, every
  other axis replicated. The implementation's own VJP runs on each shard unchanged.
  Every implementation goes this way (a sequential loop over sharded heads, as in
  "xla_chunked", is not allowed on Explicit axes).
* Auto mesh axes (`jax.sharding.Mesh`, `AxisType.Auto`: the spec is settled only when XLA
  partitions the program), kernel implementations only, when the mesh is in sight: q
  committed to it (jit of arrays placed with a `NamedSharding`) or a mesh context
  (`jax.set_mesh`). The implementation says which way (`Implementation.ON_AUTO_AXES`):
  - "custom_partitioning" (Triton): two `custom_partitioning` calls, forward and backward,
    each lowered on the local shapes XLA's partitioner hands it. `custom_partitioning` can be neither
    differentiated nor vmapped, so the pair gets its own VJP here (the backward call
    differentiates the implementation on its shard, which repeats the forward kernel; XLA
    merged the repeat with the forward call in the H100 training-step compiles tried) and
    its own batching rule (a vmapped axis joins the batch axis).
  - "shard_map" (Mosaic TPU): `custom_partitioning` never reaches the TPU compiler
    (https://github.com/jax-ml/jax/issues/38196), so a `jax.shard_map` as on Explicit axes,
    with specs that assume data parallelism since q's are not known yet: the batch over the
    mesh axes in order while they divide it, then the heads over the next axes while they
    divide them, the rest replicated. On Auto axes the in_specs are constraints XLA meets by
    resharding, so another layout gives the same results at the price of moving data;
    Explicit axes give the op the real spec. The same runs wherever the Mosaic kernels do
    (interpret mode off TPUs), so CPU tests take the TPU's path.
* No mesh in sight, one device, inside a `shard_map`, or plain XLA implementations on
  Auto axes (XLA partitions those itself): the implementation as is.

Sequence or head-dim sharding is undone (gathered) before the kernels run. With
grouped-query attention (Hk kv heads, more query heads) the heads split only over mesh axes
that divide Hk, the same axes for q and for k/v, so that a query head and its kv head
always share a device.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from pallas_kernels.block_sparse_attention import base

# Each operand's axes, in the op's argument order, and each result's: b(atch), h (kv heads)
# and H (query heads) may be split across devices, H as h is (query head i of kv head g is
# g * group + i, so splitting H over axes that divide Hk keeps every group on one device);
# q(uery length), k(ey length), d (head dim) and t (tiles) may not.
_OPERANDS = ("b H q d", "b h k d", "b h k d", "b h t", "b k", "b H q", "b H q", "b H q d")
_RESULTS = ("b H q d", "b H q")
_GRADIENTS = (0, 1, 2, 6, 7)  # q, k, v, l0, acc0: the operands that get a gradient
# Shardy wants these in order of first appearance in the rule.
_REPLICATED = ("q", "d", "k", "t")
# The query heads' factor in a Shardy rule: the kv heads' "h", and with grouped-query
# attention (more query heads than kv heads) "(h r)", r the group size, replicated.
_GROUP_FACTOR = "r"


def run_per_shard(
  implementation: base.Implementation, args: Sequence[jax.Array], options: dict[str, Any]
) -> tuple[jax.Array, jax.Array]:
  """`implementation(*args, **options)`, run by each device on its batches and heads.

  Args:
    implementation: the implementation; its `ON_AUTO_AXES` says how it runs on Auto axes
      (plain XLA implementations are left to XLA's own partitioner there).
    args: the op's eight arrays `(q, k, v, tile_ids, key_valid, m0, l0, acc0)`, checked,
      shapes as there (B x H x ... each, key_valid B x Lk).
    options: the implementation's keyword arguments (block size, scale, eps).

  Returns:
    `(out_BxHxLqxD, lse_BxHxLq)`, float32, split over batch and heads as q is.
  """
  call = functools.partial(implementation, **options)
  q_sharding = jax.typeof(args[0]).sharding
  # Auto-axis inputs show their mesh (not their spec) when committed to it; a mesh context
  # (`jax.set_mesh`) shows it too. No mesh in sight: a one-device program, as far as
  # anyone can tell here.
  mesh = q_sharding.mesh if not q_sharding.mesh.empty else jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1 or any(t == AxisType.Manual for t in mesh.axis_types):
    return call(*args)
  kv_heads = args[1].shape[1]
  if all(t == AxisType.Explicit for t in mesh.axis_types):
    batch, head = _batch_and_head_axes(q_sharding.spec, mesh, args[0].shape, kv_heads)
    return _shard_mapped(call, mesh, batch, head, args)
  way = implementation.ON_AUTO_AXES
  if way == "xla" or any(t != AxisType.Auto for t in mesh.axis_types):
    return call(*args)
  if way == "shard_map":
    # custom_partitioning never reaches the TPU compiler
    # (https://github.com/jax-ml/jax/issues/38196), and the spec is not known yet: assume
    # data parallelism.
    batch, head = _data_parallel_axes(mesh, (args[0].shape[0], kv_heads))
    return _shard_mapped(call, mesh, batch, head, args)
  group = args[0].shape[1] // kv_heads
  return _auto_partitioned(call, group)(*args)


def _spec(dims: str, batch, head) -> P:
  by_dim = {"b": batch, "h": head, "H": head}
  return P(*(by_dim.get(d) for d in dims.split()))


def _batch_and_head_axes(spec: P, mesh, shape: Sequence[int], kv_heads: int):
  """The mesh axes q's batch and head dims are split over (None: not split).

  Axes that do not divide their dim are dropped (that dim is then gathered); the heads'
  must divide the kv heads, so that k and v split with q.
  """
  axes = []
  for dim, extent in enumerate((shape[0], kv_heads)):
    entry = spec[dim] if dim < len(spec) else None
    names = (entry,) if isinstance(entry, str) else tuple(entry or ())
    size = 1
    for name in names:
      size *= mesh.shape[name]
    axes.append(names if names and extent % size == 0 else None)
  return axes


def _data_parallel_axes(mesh, shape: Sequence[int]):
  """The mesh axes a data-parallel program would split the batch and heads over.

  `shape` leads with (B, Hk): the batch takes the mesh axes in order while the product of
  their sizes divides B, the heads take the axes after those while the product divides the
  kv heads Hk (and so the query heads); the rest replicate.
  """
  names = list(mesh.axis_names)
  axes = []
  for dim in range(2):
    taken, size = [], 1
    while names and shape[dim] % (size * mesh.shape[names[0]]) == 0:
      size *= mesh.shape[names[0]]
      taken.append(names.pop(0))
    axes.append(tuple(taken) or None)
  return axes


def _shard_mapped(call, mesh, batch, head, args):
  """`call` under a `shard_map` over the whole mesh: batch and heads split over the given
  mesh axes, every other dim replicated."""
  in_specs = tuple(_spec(d, batch, head) for d in _OPERANDS)
  if all(t == AxisType.Explicit for t in mesh.axis_types):
    # On Explicit axes shard_map takes operands already laid out as in_specs say. On Auto
    # axes it takes them as they come: in_specs are constraints XLA meets by resharding.
    args = [jax.sharding.reshard(x, NamedSharding(mesh, s)) for x, s in zip(args, in_specs)]
  return jax.shard_map(
    call,
    mesh=mesh,
    in_specs=in_specs,
    out_specs=tuple(_spec(d, batch, head) for d in _RESULTS),
    check_vma=False,  # Pallas calls carry no varying-manual-axes types
  )(*args)


def _partition(operand_dims, result_dims, local_fn, mesh, arg_shapes, result_shape):
  """`custom_partitioning`'s rule: batch and heads split as q is, the rest replicated."""
  del result_shape
  q, k = arg_shapes[0], arg_shapes[1]
  batch, head = _batch_and_head_axes(q.sharding.spec, mesh, q.shape, k.shape[1])
  named = lambda dims: NamedSharding(mesh, _spec(dims, batch, head))
  return (
    mesh,
    local_fn,
    tuple(named(d) for d in result_dims),
    tuple(named(d) for d in operand_dims),
  )


def _partitioned(fn, operand_dims, result_dims, group: int):
  """`fn` as a `custom_partitioning` call over batch and heads, and vmappable."""
  partitioned = custom_partitioning(fn)
  query_heads = "h" if group == 1 else f"(h {_GROUP_FACTOR})"
  rule = lambda dims: ", ".join(d.replace("H", query_heads) for d in dims)
  group_factor = {} if group == 1 else {_GROUP_FACTOR: group}
  partitioned.def_partition(
    functools.partial(_partition, operand_dims, result_dims, fn),
    sharding_rule=rule(operand_dims) + " -> " + rule(result_dims),
    # In order of first appearance: r comes with the first operand's heads.
    need_replication_factors=tuple(group_factor) + _REPLICATED,
    **group_factor,
  )
  vmappable = jax.custom_batching.custom_vmap(lambda *args: tuple(partitioned(*args)))

  @vmappable.def_vmap
  def _fold_into_batch(axis_size, in_batched, *args):
    # Every operand leads with the batch axis, so a vmapped axis V is V more batches.
    args = [
      x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))
      for x, batched in zip(args, in_batched)
    ]
    outs = vmappable(*(x.reshape(-1, *x.shape[2:]) for x in args))
    return tuple(y.reshape(axis_size, -1, *y.shape[1:]) for y in outs), (True,) * len(outs)

  return vmappable


def _auto_partitioned(call, group: int):
  """The op with its forward and backward partitioned by XLA over batch and heads."""

  def forward(*args):
    return call(*args)

  def backward(*args_and_cotangents):
    args = args_and_cotangents[: len(_OPERANDS)]
    cotangents = args_and_cotangents[len(_OPERANDS) :]

    def differentiable(*diff):
      full = list(args)
      for i, x in zip(_GRADIENTS, diff):
        full[i] = x
      return call(*full)

    _, vjp = jax.vjp(differentiable, *(args[i] for i in _GRADIENTS))
    return vjp(tuple(cotangents))

  forward_p = _partitioned(forward, _OPERANDS, _RESULTS, group)
  gradient_dims = tuple(_OPERANDS[i] for i in _GRADIENTS)
  backward_p = _partitioned(backward, _OPERANDS + _RESULTS, gradient_dims, group)

  @jax.custom_vjp
  def op(*args):
    return tuple(forward_p(*args))

  def op_fwd(*args):
    return tuple(forward_p(*args)), args

  def op_bwd(args, cotangents):
    grads = dict(zip(_GRADIENTS, backward_p(*args, *cotangents)))
    # tile_ids, key_valid and m0 get no gradient.
    return tuple(grads.get(i) for i in range(len(_OPERANDS)))

  op.defvjp(op_fwd, op_bwd)
  return op
