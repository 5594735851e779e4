"""Compiles each Mosaic TPU block-sparse kernel for v5e and v6e and prints its memory use.

    python -m benchmarks.compile_report_tpu [--chips v5e,v6e] [--length 65536]
    python -m benchmarks.compile_report_tpu --causal --group 4   # causal, 4 query heads per kv head

Needs the `compile` extra (libtpu) and runs on a CPU-only host (it sets JAX_PLATFORMS=cpu).
For every kernel (forward, dQ, dK/dV), block size and dtype it prints the grid, the VMEM the
buffers need by `pallas_mosaic_tpu_common.vmem_bytes`, and two measurements: the size
libtpu names when it refuses a 4 KiB scoped-VMEM limit ("Scoped allocation with size X",
its first request: the streamed-tile scratch), and the smallest limit the kernel compiles
under (bisection to 4 KiB: everything the kernel needs). Then it compiles at the default
limit and times that. SMEM
is the fixed index scratch (two offsets and one chunk of indices) plus Mosaic's own words.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
for _name, _value in (
  ("TPU_SKIP_MDS_QUERY", "1"),
  ("TPU_WORKER_HOSTNAMES", "localhost"),
  ("TPU_ACCELERATOR_TYPE", "v5litepod-4"),
  ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
):
  os.environ.setdefault(_name, _value)

import argparse  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import SingleDeviceSharding  # noqa: E402

from pallas_kernels import compile_only  # noqa: E402
from pallas_kernels.block_sparse_attention import pallas_mosaic_tpu as tpu_fwd  # noqa: E402
from pallas_kernels.block_sparse_attention import pallas_mosaic_tpu_common as common  # noqa: E402
from pallas_kernels.block_sparse_attention import pallas_mosaic_tpu_vjp as tpu_vjp  # noqa: E402

_TOPOLOGY = {"v5e": "v5e:2x2", "v6e": "v6e:2x2"}
_DEFAULT_LIMIT_MIB = {"v5e": 16, "v6e": 32}
_SCOPED = re.compile(r"Scoped allocation with size ([\d.]+)([KMG]?)")
_UNIT = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}
_PROBE_LIMIT = 4096


def kernel_operands(kernel, *, B, H, L, D, block_size, dtype, causal=False, group=1):
  """Shapes and dtypes of one kernel's operands, in its call order.

  H is the kv heads; the query side holds `group` query heads per kv head, stacked.
  """
  G, bs, N = B * H, block_size, L // block_size
  f32, i32 = jnp.float32, jnp.int32
  # 8 tiles per row on average; a dK/dV column walks each for every query head of a group.
  chunks = -(-(N * 8 * (group if kernel == "dkv" else 1)) // common.INDEX_CHUNK)
  index = [((G, N, 3 if causal else 2), i32), ((G, chunks, common.INDEX_CHUNK), i32)]
  x, q_side = ((G, L, D), dtype), ((G, L * group, D), dtype)
  rows = ((G, N, group, bs), f32)  # per-query vectors, a block's group of query heads
  member_rows = ((G, N * group, 1, bs), f32)  # the same, a row per query head's block
  kmask = ((B, N, 1, bs), f32)
  if kernel == "forward":
    return [*index, q_side, x, x, kmask, rows, rows, ((G, L * group, D), f32)]
  if kernel == "dq":
    return [*index, q_side, x, x, kmask, q_side, rows, rows]
  return [*index, x, x, kmask, q_side, q_side, member_rows, member_rows]


def build_call(
  kernel, *, B, H, L, D, block_size, dtype, causal=False, group=1, vmem_limit_bytes=None
):
  static = common.Static(
    num_heads=H,
    block_size=block_size,
    scale=D**-0.5,
    eps=1e-6,
    index_chunk=common.INDEX_CHUNK,
    interpret=False,
    group=group,
    causal=causal,
  )
  shape = (B * H, L * group, L, D, dtype)
  call = {"forward": tpu_fwd.forward_call, "dq": tpu_vjp.dq_call, "dkv": tpu_vjp.dkv_call}
  return call[kernel](*shape, static=static, vmem_limit_bytes=vmem_limit_bytes)


def compile_kernel(chip, kernel, *, vmem_limit_bytes=None, **config):
  """Compiles one kernel for `chip`; returns the compiled program (raises what libtpu raises)."""
  sharding = SingleDeviceSharding(compile_only.tpu_devices(_TOPOLOGY[chip])[0])
  operands = [
    jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    for shape, dtype in kernel_operands(kernel, **config)
  ]
  call = build_call(kernel, vmem_limit_bytes=vmem_limit_bytes, **config)
  return compile_only.compile(jax.jit(call).trace(*operands).lower())


def _compiles(chip, kernel, limit, config) -> bool:
  try:
    compile_kernel(chip, kernel, vmem_limit_bytes=limit, **config)
  except Exception as error:  # pylint: disable=broad-except  (libtpu raises JaxRuntimeError)
    if _SCOPED.search(str(error)) is None:
      raise
    return False
  return True


def first_scoped_allocation(chip, kernel, **config) -> int | None:
  """The size libtpu names when it refuses a 4 KiB scoped-VMEM limit (its first request)."""
  try:
    compile_kernel(chip, kernel, vmem_limit_bytes=_PROBE_LIMIT, **config)
  except Exception as error:  # pylint: disable=broad-except
    match = _SCOPED.search(str(error))
    if match is None:
      raise
    return int(float(match.group(1)) * _UNIT[match.group(2)])
  return None


def smallest_vmem_limit(chip, kernel, low, high, **config) -> int | None:
  """The smallest scoped-VMEM limit (to 4 KiB) the kernel compiles under, by bisection."""
  if not _compiles(chip, kernel, high, config):
    return None
  while high - low > _PROBE_LIMIT:
    middle = (low + high) // 2 // 1024 * 1024
    if _compiles(chip, kernel, middle, config):
      high = middle
    else:
      low = middle
  return high


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--chips", default="v5e,v6e")
  parser.add_argument("--length", type=int, default=65536)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--causal", action="store_true", help="the causal op's kernels")
  parser.add_argument("--group", type=int, default=1, help="query heads per kv head")
  args = parser.parse_args()
  offsets = 3 if args.causal else 2
  print(
    f"B={args.batch}, H={args.heads} kv heads x {args.group} query heads each, "
    f"L={args.length}, D={args.head_dim}, causal={args.causal}; index chunk "
    f"{common.INDEX_CHUNK} (SMEM per program: {4 * (offsets + common.INDEX_CHUNK)} B)\n"
  )
  print(
    "| chip | kernel | block | dtype | grid | VMEM formula: pipelined + scratch "
    "| first scoped request | smallest limit that compiles | compiles at default limit "
    "| compile s |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|")
  for chip in args.chips.split(","):
    for dtype in (jnp.bfloat16, jnp.float32):
      for block_size in tpu_fwd.BLOCK_SIZES:
        for kernel in ("forward", "dq", "dkv"):
          config = dict(
            B=args.batch,
            H=args.heads,
            L=args.length,
            D=args.head_dim,
            block_size=block_size,
            dtype=dtype,
            causal=args.causal,
            group=args.group,
          )
          formula = common.vmem_bytes(
            kernel, block_size=block_size, head_dim=args.head_dim, dtype=dtype, group=args.group
          )
          first = first_scoped_allocation(chip, kernel, **config) or 0
          smallest = smallest_vmem_limit(chip, kernel, first, 4 * formula["total"], **config)
          start = time.perf_counter()
          try:
            compile_kernel(chip, kernel, **config)
            fits = f"yes ({_DEFAULT_LIMIT_MIB[chip]} MiB)"
          except Exception as error:  # pylint: disable=broad-except
            fits = f"no: {str(error).splitlines()[0][:80]}"
          seconds = time.perf_counter() - start
          grid = (args.batch * args.heads, args.length // block_size)
          print(
            f"| {chip} | {kernel} | {block_size} | {jnp.dtype(dtype).name} | {grid} "
            f"| {formula['pipelined'] / 2**10:.0f} + {formula['scratch'] / 2**10:.0f} "
            f"= {formula['total'] / 2**10:.0f} KiB "
            f"| {first / 2**10:.0f} KiB "
            f"| {'-' if smallest is None else f'{smallest / 2**10:.0f} KiB'} "
            f"| {fits} | {seconds:.1f} |",
            flush=True,
          )


if __name__ == "__main__":
  main()
