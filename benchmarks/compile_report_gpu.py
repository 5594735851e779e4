r"""What ptxas says about the Pallas Triton kernels, compiled for an H100 without a GPU.

Compiles the block-sparse op's VJP (which launches all three kernels: forward, dQ, dK/dV)
with `implementation="pallas_triton"` for a compile-only H100 (`pallas_kernels.compile_only`)
and prints one markdown row per kernel: registers per thread, spill bytes, dynamic shared
memory, the tensor-core instruction in the PTX, grid and threads. These are compile-time
facts; speed needs the device (`benchmarks.kernels`).

    python -m benchmarks.compile_report_gpu                  # the table in docs/kernels.md
    python -m benchmarks.compile_report_gpu --precisions all --head_dims 64
    python -m benchmarks.compile_report_gpu --causal         # the causal kernels
    python -m benchmarks.compile_report_gpu --groups 2,4     # grouped-query: Hq / Hk

Needs the `compile` extra; sets `JAX_PLATFORMS=cpu` itself when jax has not started yet.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

# Before jax starts: the compile-only GPU client registers only on the CPU platform.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

from pallas_kernels import compile_only
from pallas_kernels.block_sparse_attention import api, base, pallas_triton
from pallas_kernels.block_sparse_attention.pallas_triton import PallasTriton

KERNEL_PREFIX = "mra_block_sparse_"


@dataclasses.dataclass(frozen=True)
class Config:
  """One compiled VJP: dtype name, f32 precision (None: default or half precision), sizes,
  causal or not, and query heads per kv head (`group`, grouped-query attention)."""

  dtype: str
  block_size: int
  head_dim: int
  precision: str | None = None
  length: int = 256
  batch: int = 1
  heads: int = 2
  causal: bool = False
  group: int = 1

  def tiles(self) -> int:
    n = self.length // self.block_size
    return min(4 * n, n * n)


def op_shapes(config: Config, device: jax.Device):
  """ShapeDtypeStructs of the op's 8 arrays, placed on the compile-only `device`."""
  return base.argument_shapes(
    batch=config.batch,
    heads=config.heads * config.group,
    kv_heads=config.heads,
    length=config.length,
    head_dim=config.head_dim,
    num_tiles=config.tiles(),
    dtype=jnp.dtype(config.dtype),
    sharding=SingleDeviceSharding(device),
  )


def op_forward(block_size: int, precision: str | None, causal: bool = False):
  """`(q, k, v, ids, valid, m0, l0, acc0) -> (out, lse)` with the GPU kernels."""
  return lambda *args: api.block_sparse_attention(
    *args,
    block_size=block_size,
    causal=causal,
    implementation=PallasTriton(precision=precision, interpret=False),
  )


def op_vjp(block_size: int, precision: str | None, causal: bool = False):
  """`(q, k, v, ids, valid, m0, l0, acc0) -> ((out, lse), (dq, dk, dv, dl0, dacc0))`."""
  forward = op_forward(block_size, precision, causal)

  def run(q, k, v, ids, valid, m0, l0, acc0):
    attend = lambda q, k, v, l0, acc0: forward(q, k, v, ids, valid, m0, l0, acc0)
    outs, pullback = jax.vjp(attend, q, k, v, l0, acc0)
    return outs, pullback(outs)

  return run


def kernel_report(config: Config) -> tuple[list[compile_only.GpuKernel], float]:
  """The op's kernels in the VJP of `config`, compiled for an H100, and the compile seconds."""
  device = compile_only.h100_devices()[0]
  start = time.perf_counter()
  vjp = op_vjp(config.block_size, config.precision, config.causal)
  lowered = jax.jit(vjp).trace(*op_shapes(config, device))
  with tempfile.TemporaryDirectory() as dump:
    _, kernels = compile_only.compile_with_kernel_report(lowered.lower(), dump, KERNEL_PREFIX)
  return kernels, time.perf_counter() - start


HEADER = (
  "| dtype | f32 precision | block | D | kernel | registers | spill st/ld (B) | shared mem (B) "
  "| mma | grid | threads |\n|---|---|---|---|---|---|---|---|---|---|---|"
)
# With --causal or --groups: the same columns after these.
VARIANT_HEADER = (
  "| causal | group | dtype | f32 precision | block | D | kernel | registers | spill st/ld (B) "
  "| shared mem (B) | mma | grid | threads |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def markdown_row(config: Config, kernel: compile_only.GpuKernel, variants: bool = False) -> str:
  precision = "-" if config.dtype != "float32" else config.precision or "default"
  if config.dtype == "float32" and config.precision is None:
    precision = f"{pallas_triton.DEFAULT_F32_PRECISION} (default)"
  fields = (
    config.dtype,
    precision,
    config.block_size,
    config.head_dim,
    kernel.name.removeprefix(KERNEL_PREFIX),
    kernel.registers,
    f"{kernel.spill_store_bytes}/{kernel.spill_load_bytes}",
    kernel.shared_memory_bytes,
    kernel.mma,
    "x".join(map(str, kernel.grid)),
    kernel.threads[0],
  )
  if variants:
    fields = ("yes" if config.causal else "no", config.group, *fields)
  return "| " + " | ".join(map(str, fields)) + " |"


def _parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dtypes", default="bfloat16,float32")
  p.add_argument("--block_sizes", default="32,64")
  p.add_argument("--head_dims", default="64,128")
  p.add_argument(
    "--precisions",
    default="default",
    help="float32 precisions: 'default', 'all' (every F32_PRECISIONS entry) or a list",
  )
  p.add_argument("--length", type=int, default=256)
  p.add_argument("--causal", action="store_true", help="the causal op's kernels")
  p.add_argument("--groups", default="1", help="query heads per kv head, e.g. 1,2,4")
  return p.parse_args(argv)


def configs(args) -> list[Config]:
  if args.precisions == "default":
    precisions = (None,)
  elif args.precisions == "all":
    precisions = pallas_triton.F32_PRECISIONS
  else:
    precisions = tuple(args.precisions.split(","))
  out = []
  for group in map(int, args.groups.split(",")):
    for dtype in args.dtypes.split(","):
      for precision in precisions if dtype == "float32" else (None,):
        for bs in map(int, args.block_sizes.split(",")):
          for D in map(int, args.head_dims.split(",")):
            config = Config(dtype, bs, D, precision, length=args.length)
            out.append(dataclasses.replace(config, causal=args.causal, group=group))
  return out


def main(argv=None) -> list[tuple[Config, compile_only.GpuKernel]]:
  args = _parse_args(argv)
  reason = compile_only.missing("cuda")
  if reason:
    raise SystemExit(f"cannot compile for an H100 here: {reason}")
  print(f"jax {jax.__version__}, ptxas {compile_only.ptxas_path()}, sm_90a, L={args.length}\n")
  variants = args.causal or args.groups != "1"
  print(VARIANT_HEADER if variants else HEADER)
  rows = []
  for config in configs(args):
    kernels, seconds = kernel_report(config)
    for kernel in kernels:
      rows.append((config, kernel))
      print(markdown_row(config, kernel, variants), flush=True)
    print(f"{config}: compiled in {seconds:.1f} s", file=sys.stderr, flush=True)
  return rows


if __name__ == "__main__":
  main()
