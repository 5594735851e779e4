"""Forward+backward time and memory against length for every registered attention.

    python -m benchmarks.efficiency [--quick] --out=DIR [--lengths=512,4096]
        [--methods=softmax,mra2,...] [--batch=1 --heads=12 --head_dim=64] [--repeats=5]
    python -m benchmarks.efficiency --plot_only --out=DIR   # redraw from DIR's JSON

The paper's profiler setting (docs/benchmarks.md, "The published figures"): one attention
layer, 12 heads x 64, float32, gradients of `out.mean()` in q, k, v, swept budgets for
MRA-2/MRA-2-s (`block_per_row`), Nystromformer (landmarks), Longformer/Scatterbrain (window)
and BigBird (block size), every other attention at its registry defaults. Here the batch is
fixed (default B=1) instead of the paper's batch-until-OOM search.

Per (method, length): compile once, read XLA's compiled temporary memory
(`memory_analysis().temp_size_in_bytes`); if it is over --max_temp_gib nothing runs
("too_big"); otherwise one warm-up call, then the median of --repeats timed calls. A warm-up
slower than --max_call_seconds is reported as "too_slow" (its single time is kept) and the
method is not run at longer lengths. On GPU/TPU the allocator's peak (`memory_stats()`,
process-wide, so monotone over the run) is recorded too. Softmax runs first at each length
and every time and memory is also given as a ratio to it, measured in the same process.

Writes DIR/efficiency.json (rewritten after every cell, so partial runs are usable),
DIR/efficiency_time.png and DIR/efficiency_memory.png (log-log), and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import jax

from benchmarks import _methods, _plots, _timing

_CPU_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
_ACCEL_LENGTHS = _CPU_LENGTHS + (32768, 65536)
_QUICK_LENGTHS = (512, 4096)
# --quick: the MRA variants at the paper's small budgets, one or two budgets of the other
# swept baselines, every other attention at its defaults.
_QUICK_BUDGETS = {
  "mra2": (1, 2, 4, 8),
  "mra2_s": (1, 8),
  "nystromformer": (16, 64),
  "longformer": (64,),
  "scatterbrain": (64,),
  "bigbird": (32,),
}


def _default_max_temp_bytes() -> int:
  stats = jax.devices()[0].memory_stats()
  if stats and stats.get("bytes_limit"):
    return int(0.8 * stats["bytes_limit"])
  # CPU: half the RAM (other processes share this machine).
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def hardware() -> dict[str, object]:
  """What the numbers were measured on."""
  dev = jax.devices()[0]
  return {
    "platform": dev.platform,
    "device_kind": dev.device_kind,
    "device_count": jax.device_count(),
    "cpu_count": os.cpu_count(),
    "machine": platform.machine(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "git": _git_describe(),
  }


def _git_describe() -> str | None:
  """The checkout's commit (+ "-dirty" with local changes), None outside a checkout."""
  try:
    return subprocess.run(
      ["git", "describe", "--always", "--dirty"],
      capture_output=True,
      text=True,
      check=True,
      timeout=10,
      cwd=os.path.dirname(os.path.abspath(__file__)),
    ).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None


def run(
  *,
  lengths: list[int],
  names: list[str],
  budgets: dict[str, tuple[int, ...]] | None,
  batch: int,
  heads: int,
  head_dim: int,
  repeats: int,
  max_temp_bytes: int,
  max_call_seconds: float,
  out_dir: str,
  argv: list[str] | None = None,
  log=print,
) -> dict[str, object]:
  """Runs the sweep, writes JSON and plots under `out_dir`, returns the JSON object."""
  for name, value in (
    ("batch", batch),
    ("heads", heads),
    ("head_dim", head_dim),
    ("repeats", repeats),
  ):
    if value < 1:
      raise ValueError(f"{name} must be >= 1; got {name}={value}")
  if not lengths or min(lengths) < 1:
    raise ValueError(f"lengths must be positive; got {lengths=}")
  os.makedirs(out_dir, exist_ok=True)
  names = ["softmax"] + [n for n in names if n != "softmax"]
  methods, problems = _methods.methods_for(names, budgets)
  report = {
    "setting": {
      "batch": batch,
      "heads": heads,
      "head_dim": head_dim,
      "dtype": "float32",
      "pass": "forward+backward of mean(out) w.r.t. q, k, v",
      "lengths": lengths,
      "repeats": repeats,
      "max_temp_bytes": max_temp_bytes,
      "max_call_seconds": max_call_seconds,
      "argv": argv,
      "hardware": hardware(),
      "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    },
    "problems": problems,
    "results": [],
  }
  for p in problems:
    log(f"PROBLEM {p}")
  rows = report["results"]
  gave_up: set[str] = set()
  for L in sorted(lengths):
    shape = (batch, L, heads, head_dim)
    qkv = _timing.random_qkv(shape)
    soft = None
    for m in (m for m in methods if _methods.fits(m, L)):
      row = {
        "name": m.name,
        "label": m.label,
        "knob": m.knob,
        "budget": m.budget,
        "knobs": m.knobs,
        "length": L,
      }
      if m.label in gave_up:
        row.update(status="skipped", error="too slow at a shorter length")
      else:
        try:
          attend = _methods.build(m, num_heads=heads, head_dim=head_dim, max_length=L)
          meas = _timing.measure(
            _timing.fwd_bwd(attend),
            qkv,
            repeats=repeats,
            max_temp_bytes=max_temp_bytes,
            max_call_seconds=max_call_seconds,
          )
        except Exception as e:  # pylint: disable=broad-except
          meas = _timing.Measurement("error", error=f"build: {type(e).__name__}: {e}"[:500])
        row.update(vars(meas))
        if meas.status == "too_slow":
          gave_up.add(m.label)
      row["temp_mib"] = None if row.get("temp_bytes") is None else row["temp_bytes"] / 2**20
      row["peak_mib"] = None if row.get("peak_bytes") is None else row["peak_bytes"] / 2**20
      if m.name == "softmax":
        soft = row
      row["time_ratio_vs_softmax"] = _ratio(row.get("seconds"), soft and soft.get("seconds"))
      row["temp_ratio_vs_softmax"] = _ratio(row.get("temp_bytes"), soft and soft.get("temp_bytes"))
      rows.append(row)
      log(_format_row(row))
      with open(os.path.join(out_dir, "efficiency.json"), "w") as f:
        json.dump(report, f, indent=1)
  plot(report, out_dir)
  return report


def plot(report: dict[str, object], out_dir: str) -> None:
  """Writes the time and memory figures of an efficiency report (also a partial one)."""
  s = report["setting"]
  title = (
    f"fwd+bwd, B={s['batch']} H={s['heads']} D={s['head_dim']} f32, "
    f"{s['hardware']['device_kind']}, jax {s['hardware']['jax']}"
  )
  _plots.efficiency_grid(
    report["results"],
    "seconds",
    "seconds (median)",
    "time: " + title,
    os.path.join(out_dir, "efficiency_time.png"),
  )
  _plots.efficiency_grid(
    report["results"],
    "temp_mib",
    "compiled temp MiB",
    "memory: " + title,
    os.path.join(out_dir, "efficiency_memory.png"),
  )


def _ratio(a, b):
  return None if a is None or not b else a / b


def _format_row(r: dict[str, object]) -> str:
  fmt = lambda v, spec: "-" if v is None else format(v, spec)
  return (
    f"| {r['length']} | {r['label']} | {r['status']} | {fmt(r.get('seconds'), '.4f')} "
    f"| {fmt(r.get('time_ratio_vs_softmax'), '.3f')} | {fmt(r.get('temp_mib'), '.1f')} "
    f"| {fmt(r.get('temp_ratio_vs_softmax'), '.3f')} |"
    + (f" {r['error']}" if r.get("error") else "")
  )


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="bench_out/efficiency")
  parser.add_argument(
    "--quick", action="store_true", help=f"lengths {_QUICK_LENGTHS}, fewer budgets, 3 repeats"
  )
  parser.add_argument("--lengths", default=None, help="comma-separated; overrides defaults")
  parser.add_argument(
    "--methods", default=None, help="comma-separated registry names (default: all registered)"
  )
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=12)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=None, help="default 5 (3 with --quick)")
  parser.add_argument(
    "--max_temp_gib",
    type=float,
    default=None,
    help="default: half the RAM on CPU, 80%% of device memory otherwise",
  )
  parser.add_argument(
    "--max_call_seconds", type=float, default=None, help="default 60 (15 with --quick)"
  )
  parser.add_argument(
    "--plot_only", action="store_true", help="only redraw the figures from DIR/efficiency.json"
  )
  args = parser.parse_args(argv)
  if args.plot_only:
    with open(os.path.join(args.out, "efficiency.json")) as f:
      plot(json.load(f), args.out)
    return
  accel = jax.devices()[0].platform != "cpu"
  if args.lengths:
    lengths = [int(x) for x in args.lengths.split(",")]
  else:
    lengths = list(_QUICK_LENGTHS if args.quick else (_ACCEL_LENGTHS if accel else _CPU_LENGTHS))
  names = args.methods.split(",") if args.methods else _methods.registered_names()
  max_temp = int(args.max_temp_gib * 2**30) if args.max_temp_gib else _default_max_temp_bytes()
  print("| L | method | status | seconds | time/softmax | temp MiB | temp/softmax |")
  print("|---|---|---|---|---|---|---|", flush=True)
  run(
    lengths=lengths,
    names=names,
    budgets=_QUICK_BUDGETS if args.quick else None,
    batch=args.batch,
    heads=args.heads,
    head_dim=args.head_dim,
    repeats=args.repeats or (3 if args.quick else 5),
    max_temp_bytes=max_temp,
    max_call_seconds=args.max_call_seconds or (15.0 if args.quick else 60.0),
    out_dir=args.out,
    argv=sys.argv if argv is None else argv,
    log=lambda s: print(s, flush=True),
  )


if __name__ == "__main__":
  main()
