r"""Benchmarks the Pallas block-sparse attention kernels against dense attention.

For each sequence length and dtype: forward and forward+backward wall time, the achieved
TFLOP/s of the high-resolution (block-sparse) part, XLA's compiled memory figures, the
same for `jax.nn.dot_product_attention` (cuDNN where available, XLA otherwise), and the
whole of MRA-2 (`mra_jax.mra_attention` with the same implementation: pooling, selection,
low-resolution term and the kernels), whose fwd+bwd against dense is the headline figure
(`mra2_speedup_fwdbwd`).

FLOPs follow the flash-attention convention (`benchmarks._timing`): forward `4 * bs^2 * D` per
selected tile (QK^T and PV), backward 2.5x the forward (recomputation of QK^T not counted).
Times come from the same harness as every benchmark here (`_timing`: one warm-up, then the
median of `--repeats` runs). Float32 inputs
are timed once per dot precision (`--precisions`, default every entry of
`pallas_kernels.F32_PRECISIONS` for "pallas_triton"): the speed side of the error table in
docs/kernels.md. Each row's `precision` says which ("native" for half-precision inputs).

On an accelerator:
  python -m benchmarks.kernels --lengths 1024,4096,16384,65536 --dtypes bfloat16,float32
On CPU (interpret mode, tiny sizes; checks the script runs, the times mean nothing):
  python -m benchmarks.kernels --quick
"""
# pylint: disable=invalid-name

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import mra_jax
import pallas_kernels
from benchmarks import _timing
from pallas_kernels.block_sparse_attention import api

_PALLAS_IMPLEMENTATIONS = ("pallas_triton", "pallas_mosaic_tpu")


def _parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument(
    "--lengths",
    default="1024,2048,4096,8192,16384,32768,65536",
    help="comma-separated sequence lengths",
  )
  p.add_argument("--dtypes", default="bfloat16,float32")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--block_size", type=int, default=32)
  p.add_argument(
    "--block_per_row",
    type=int,
    default=8,
    help="MRA budget: tiles per head = block_per_row * (L / block_size)",
  )
  p.add_argument(
    "--implementation",
    default="",
    choices=("", *_PALLAS_IMPLEMENTATIONS),
    help="the Pallas implementation to time; default: pallas_mosaic_tpu on TPU, "
    "pallas_triton elsewhere (interpret mode off its device)",
  )
  p.add_argument(
    "--precisions",
    default="all",
    help="float32 dot precisions to time with pallas_triton: 'all' (pallas_kernels."
    "F32_PRECISIONS), 'default' or a comma-separated list",
  )
  p.add_argument("--repeats", type=int, default=20, help="timed runs after one warm-up")
  p.add_argument("--skip_dense", action="store_true", help="do not time dense attention")
  p.add_argument(
    "--skip_mra",
    action="store_true",
    help="do not time the whole of MRA-2 (mra_attention with the same implementation)",
  )
  p.add_argument("--json", default="", help="also write the rows to this file")
  p.add_argument(
    "--quick", action="store_true", help="tiny sizes (L=256, B=H=1, 1 iteration): a CPU smoke run"
  )
  args = p.parse_args(argv)
  if not args.implementation:
    tpu = jax.default_backend() == "tpu"
    args.implementation = "pallas_mosaic_tpu" if tpu else "pallas_triton"
  if args.quick:
    args.lengths, args.batch, args.heads, args.repeats = "256", 1, 1, 1
  if args.implementation not in api.TAKES_PRECISION or args.precisions == "default":
    args.precisions = (None,)
  elif args.precisions == "all":
    args.precisions = pallas_kernels.F32_PRECISIONS
  else:
    args.precisions = tuple(args.precisions.split(","))
  return args


def _tile_ids(key, B, H, Nq, Nk, K):
  """Random global top-K tile ids per head (uneven rows, as MRA's selection), sorted."""
  scores = jax.random.uniform(key, (B, H, Nq * Nk))
  _, ids = jax.lax.top_k(scores, K)
  return jnp.sort(ids, axis=-1).astype(jnp.int32)


def _time(fn: Callable[..., Any], args: tuple, repeats: int) -> float:
  """Median seconds of the jitted `fn(*args)` (`benchmarks._timing`: one warm-up, then
  `repeats` runs)."""
  compiled, compile_seconds, temp = _timing.compile_program(fn, args)
  meas = _timing.time_compiled(
    compiled,
    args,
    repeats=repeats,
    max_call_seconds=float("inf"),
    temp_bytes=temp,
    compile_seconds=compile_seconds,
  )
  if meas.status != "ok":
    raise RuntimeError(meas.error)
  return meas.seconds


def _memory(jitted, *args) -> dict[str, int] | None:
  """XLA's compiled memory figures (bytes) of `jitted(*args)`, where the backend gives them."""
  try:
    m = jitted.lower(*args).compile().memory_analysis()
  except Exception:  # pylint: disable=broad-exception-caught
    return None
  if m is None:
    return None
  return {
    "temp": int(m.temp_size_in_bytes),
    "args": int(m.argument_size_in_bytes),
    "out": int(m.output_size_in_bytes),
  }


def _fwd_and_fwdbwd(f):
  """Jitted forward and forward+backward (VJP under a ones cotangent) of `f`."""
  fwd = jax.jit(f)

  def fwd_bwd(*xs):
    out, pullback = jax.vjp(f, *xs)
    return pullback(jax.tree.map(jnp.ones_like, out))

  return fwd, jax.jit(fwd_bwd)


def bench_one(args, L: int, dtype, precision: str | None = None) -> dict[str, Any]:
  """Times the kernels and dense attention at one length, dtype and f32 dot precision."""
  B, H, D, bs = args.batch, args.heads, args.head_dim, args.block_size
  Nq = Nk = L // bs
  K = min(args.block_per_row * Nq, Nq * Nk)
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(kk, (B, H, L, D), dtype) for kk in keys[:3])
  ids = _tile_ids(keys[3], B, H, Nq, Nk, K)
  valid = jnp.ones((B, L), bool)
  m0 = jnp.full((B, H, L), -jnp.inf, jnp.float32)
  l0, acc0 = jnp.zeros((B, H, L), jnp.float32), jnp.zeros((B, H, L, D), jnp.float32)

  opts = {} if precision is None else {"precision": precision}

  def sparse(q, k, v):
    return pallas_kernels.block_sparse_attention(
      q, k, v, ids, valid, m0, l0, acc0, block_size=bs, implementation=args.implementation, **opts
    )

  flops_fwd = _timing.selected_tile_flops(B, H, K, bs, D)
  row = {
    "implementation": args.implementation,
    "L": L,
    "dtype": jnp.dtype(dtype).name,
    "B": B,
    "H": H,
    "D": D,
    "block_size": bs,
    "tiles_per_head": K,
    "precision": precision or ("native" if dtype != jnp.float32 else "default"),
    "sparse_fwd_flops": flops_fwd,
  }
  fwd, fwd_bwd = _fwd_and_fwdbwd(sparse)
  t_f = _time(fwd, (q, k, v), args.repeats)
  t_fb = _time(fwd_bwd, (q, k, v), args.repeats)
  row.update(
    sparse_fwd_ms=1e3 * t_f,
    sparse_fwdbwd_ms=1e3 * t_fb,
    sparse_fwd_tflops=flops_fwd / t_f / 1e12,
    sparse_fwdbwd_tflops=_timing.FWD_BWD_FLOP_FACTOR * flops_fwd / t_fb / 1e12,
    sparse_fwdbwd_memory=_memory(fwd_bwd, q, k, v),
  )

  # mra_attention and dot_product_attention take (B, L, H, D).
  qt, kt, vt = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
  if not args.skip_mra:
    mra2 = lambda q, k, v: mra_jax.mra_attention(
      q,
      k,
      v,
      block_size=bs,
      block_per_row=args.block_per_row,
      approx_mode="full",
      impl=args.implementation,
      **opts,
    )
    m_fwd, m_fwd_bwd = _fwd_and_fwdbwd(mra2)
    row.update(
      mra2_fwd_ms=1e3 * _time(m_fwd, (qt, kt, vt), args.repeats),
      mra2_fwdbwd_ms=1e3 * _time(m_fwd_bwd, (qt, kt, vt), args.repeats),
      mra2_fwdbwd_memory=_memory(m_fwd_bwd, qt, kt, vt),
    )

  if not args.skip_dense:
    dense_flops_fwd = _timing.dense_attention_flops(B, H, L, D)
    for impl in ("cudnn", "xla"):
      if impl == "cudnn" and (jax.default_backend() != "gpu" or dtype == jnp.float32):
        continue  # cuDNN flash attention: GPU, half precision only
      dense = lambda q, k, v, impl=impl: jax.nn.dot_product_attention(q, k, v, implementation=impl)
      try:
        d_fwd, d_fwd_bwd = _fwd_and_fwdbwd(dense)
        td_f = _time(d_fwd, (qt, kt, vt), args.repeats)
        td_fb = _time(d_fwd_bwd, (qt, kt, vt), args.repeats)
      except Exception as e:  # pylint: disable=broad-exception-caught
        row["dense_error"] = f"{impl}: {type(e).__name__}: {str(e)[:200]}"
        continue
      row.update(
        dense_impl=impl,
        dense_fwd_ms=1e3 * td_f,
        dense_fwdbwd_ms=1e3 * td_fb,
        dense_fwd_tflops=dense_flops_fwd / td_f / 1e12,
        dense_fwdbwd_tflops=_timing.FWD_BWD_FLOP_FACTOR * dense_flops_fwd / td_fb / 1e12,
        dense_fwdbwd_memory=_memory(d_fwd_bwd, qt, kt, vt),
        speedup_fwd=td_f / t_f,
        speedup_fwdbwd=td_fb / t_fb,
      )
      if "mra2_fwdbwd_ms" in row:
        row.update(
          mra2_speedup_fwd=1e3 * td_f / row["mra2_fwd_ms"],
          mra2_speedup_fwdbwd=1e3 * td_fb / row["mra2_fwdbwd_ms"],
        )
      row.pop("dense_error", None)
      break
  return row


def main(argv=None):
  args = _parse_args(argv)
  print(f"devices: {jax.devices()}  backend: {jax.default_backend()}  jax {jax.__version__}")
  rows = []
  for dtype_name in args.dtypes.split(","):
    dtype = jnp.dtype(dtype_name)
    for precision in args.precisions if dtype == jnp.float32 else (None,):
      for L in (int(x) for x in args.lengths.split(",")):
        row = bench_one(args, L, dtype, precision)
        rows.append(row)
        print(json.dumps(row), flush=True)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
