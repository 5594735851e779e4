"""Do the linear attentions scale linearly? fwd+bwd time at two lengths, on this machine.

    python -m benchmarks.linear_scaling [--lengths=4096,16384] [--methods=adamra,performer]
                                        [--repeats=3]

B=1, H=8, D=64, float32, each method at its registry defaults (the MRA paper's LRA configs),
built with max_length = L as a model for that length would be (this sizes Linformer's
projection and SOFT's landmark convolution). Time is the fastest of --repeats runs of the
jitted gradient of mean(out) in q, k and v, after one warm-up call (the fastest, not the
median, because a shared machine only ever adds time); memory is XLA's compiled temporary
buffer size. Prints a Markdown table with time(L_max) / time(L_min) per method: linear
scaling gives the length ratio (4 for 4096 -> 16384), quadratic scaling its square (16).
"""

from __future__ import annotations

import argparse
import math
import sys

import jax

from benchmarks import _methods, _timing

METHODS = ("adamra", "performer", "linformer", "nystromformer", "soft", "yoso")
B, H, D = 1, 8, 64


def measure(name: str, length: int, repeats: int):
  """(fastest seconds, compiled temp bytes) of fwd+bwd of `name` at `length`."""
  attend = _methods.build(_methods.Method(name, {}), num_heads=H, head_dim=D, max_length=length)
  meas = _timing.measure(
    _timing.fwd_bwd(attend),
    _timing.random_qkv((B, length, H, D)),
    repeats=repeats,
    max_temp_bytes=sys.maxsize,
    max_call_seconds=math.inf,
  )
  if meas.status != "ok":
    raise RuntimeError(f"{name} at L={length}: {meas.status}: {meas.error}")
  return meas.min_seconds, meas.temp_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="4096,16384")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  lengths = [int(x) for x in args.lengths.split(",")]
  methods = args.methods.split(",")
  print(
    f"fwd+bwd, B={B} H={H} D={D} float32, {jax.devices()[0].device_kind}, "
    f"fastest of {args.repeats}\n"
  )
  head = " | ".join(f"L={n} s" for n in lengths)
  mem = " | ".join(f"L={n} MiB" for n in lengths)
  print(f"| method | {head} | {mem} | time ratio | memory ratio |")
  print("|---" * (2 * len(lengths) + 3) + "|")
  for name in methods:
    rows = [measure(name, n, args.repeats) for n in lengths]
    secs = " | ".join(f"{s:.3f}" for s, _ in rows)
    mibs = " | ".join(f"{t / 2**20:.0f}" for _, t in rows)
    print(
      f"| {name} | {secs} | {mibs} | {rows[-1][0] / rows[0][0]:.2f} | "
      f"{rows[-1][1] / rows[0][1]:.2f} |",
      flush=True,
    )


if __name__ == "__main__":
  main()
