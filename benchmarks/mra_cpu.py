"""MRA-2 (impl="xla_chunked") against dense attention on this machine: fwd+bwd time and memory.

    python -m benchmarks.mra_cpu [--lengths=1024,4096,16384,65536] [--out=DIR]

B=1, H=8, D=64, float32, block_per_row=8, approx_mode="full" (MRA-2).
Dense is `jax.nn.dot_product_attention` (XLA on CPU), measured in the same process, and
run only where its compiled temporary memory fits in half of this machine's RAM (its
memory is still reported from compilation). fwd+bwd is the gradient of mean(out) in q, k
and v, as in `benchmarks.efficiency`. Time is the median of --repeats runs after
a warm-up call; memory is XLA's compiled temporary buffer size
(`compile().memory_analysis().temp_size_in_bytes`). Prints a Markdown table; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import jax

import mra_jax
from benchmarks import _timing


def _mra(q, k, v):
  return mra_jax.mra_attention(q, k, v, block_per_row=8, approx_mode="full", impl="xla_chunked")


def _measure(attend, shape, repeats, budget_bytes):
  """(median fwd+bwd seconds, or None where it does not fit; compiled temp bytes)."""
  meas = _timing.measure(
    _timing.fwd_bwd(attend),
    _timing.random_qkv(shape),
    repeats=repeats,
    max_temp_bytes=budget_bytes,
    max_call_seconds=math.inf,
  )
  if meas.status not in ("ok", "too_big"):
    raise RuntimeError(f"{attend} at {shape}: {meas.status}: {meas.error}")
  return meas.seconds, meas.temp_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", default="1024,4096,16384,65536")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="bench_out/mra_cpu")
  args = parser.parse_args()
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  rows = []
  mib = lambda b: b / 2**20
  print(
    f"# MRA-2 (xla_chunked) vs dense, fwd+bwd, B=1 H=8 D=64 f32, block_per_row=8, "
    f"{jax.devices()[0].device_kind} x{os.cpu_count()} cores, jax {jax.__version__}"
  )
  print(
    "| L | MRA-2 time (s) | dense time (s) | speed-up | MRA-2 temp (MiB) | "
    "dense temp (MiB) | memory ratio |"
  )
  print("|---|---|---|---|---|---|---|")
  for L in (int(x) for x in args.lengths.split(",")):
    shape = (1, L, 8, 64)
    t_mra, m_mra = _measure(_mra, shape, args.repeats, ram // 2)
    t_dense, m_dense = _measure(jax.nn.dot_product_attention, shape, args.repeats, ram // 2)
    row = dict(
      length=L,
      mra_seconds=t_mra,
      dense_seconds=t_dense,
      mra_temp_bytes=m_mra,
      dense_temp_bytes=m_dense,
    )
    rows.append(row)
    speed = f"{t_dense / t_mra:.1f}x" if t_dense and t_mra else "n/a (dense does not fit)"
    fmt = lambda t: "-" if t is None else f"{t:.3f}"
    print(
      f"| {L} | {fmt(t_mra)} | {fmt(t_dense)} | {speed} | {mib(m_mra):.0f} | "
      f"{mib(m_dense):.0f} | {m_dense / m_mra:.1f}x |",
      flush=True,
    )
  timed = {r["length"]: r["mra_seconds"] for r in rows if r["mra_seconds"]}
  if 4096 in timed and 16384 in timed:
    print(f"\nMRA-2 time(16384) / time(4096) = {timed[16384] / timed[4096]:.2f}")
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "mra_cpu.json"), "w") as f:
    json.dump(dict(rows=rows, jax=jax.__version__, cores=os.cpu_count()), f, indent=1)


if __name__ == "__main__":
  main()
