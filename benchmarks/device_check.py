r"""One command for a GPU slice: correctness of every GPU implementation, then speed.

    python -m benchmarks.device_check --out=DIR           # on a GPU machine, < 3 minutes
    python -m benchmarks.device_check --out=DIR --quick   # same code path on CPU, tiny shapes

Correctness: the block-sparse op (`pallas_kernels.block_sparse_attention`) and
`mra_jax.mra_attention` (MRA-2 and MRA-2-s) with each GPU implementation, and for float32
each f32 dot precision the Triton implementation offers, against the "reference"
implementation computed at float32 ("highest") matmul precision: output and VJP under a
random cotangent, float32 and bfloat16, block 32 and 64, with key padding, uneven and empty
tile rows, empty initial states and padded queries. A mismatch is reported, never fatal.

Speed: MRA-2 and MRA-2-s (block 32, `block_per_row=8`, implementation "auto") forward and
forward+backward (of `mean(out)`) against `jax.nn.dot_product_attention` with
`implementation="cudnn"` (bfloat16; cuDNN takes no float32) and `"xla"` (both dtypes),
measured in the same run; speed-ups are dense time / MRA time. "hi-res TFLOP/s" is the
selected tiles' FLOPs (from the tile budget) over the whole MRA call's time, so it is a lower
bound on the kernels' own rate. A baseline that does not fit or fails says so in its row.

Every program is compiled first, several at a time in threads (XLA compiles outside the
GIL), then run one after another, so the timings do not share the CPU with compilers.
Writes DIR/device_check.json and DIR/device_check.md. Exits 2 without a GPU (unless
--quick) or when a package is missing.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import _device_causal, _device_report, _timing

# The libraries need packages (flax) that a bare GPU image may lack: say which, and how to
# install them, instead of a traceback.
try:
  import mra_jax
  from benchmarks import _device_cases
  from pallas_kernels.block_sparse_attention import api
  from tools import source_stamp

  _IMPORT_ERROR = None
except ImportError as _error:
  _IMPORT_ERROR = _error

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = (
  "install the wheels carried in .whl/ (docs/gpu.md, 'Offline install'): python3 -m pip "
  "install -q --no-index --no-deps --no-compile .whl/*.whl && python3 -m pip install -q "
  "--no-index --no-deps --no-build-isolation -e ."
)
GPU_IMPLEMENTATIONS = ("xla_chunked", "pallas_triton")
_MODE_LABELS = {"full": "MRA-2", "sparse": "MRA-2-s", "causal": "causal MRA-2"}


@dataclasses.dataclass(frozen=True)
class Plan:
  """Sizes of one run: GPU (`gpu_plan`) or the CPU smoke run (`quick_plan`)."""

  check_dtypes: tuple[str, ...]
  check_modes: tuple[str, ...]  # MRA's approx modes checked (MRA-2-s: first block size only)
  block_sizes: tuple[int, ...]
  check_sizes: _device_cases.CheckSizes
  speed_dtypes: tuple[str, ...]
  speed_shapes: tuple[tuple[int, int, int, int], ...]  # (B, H, L, D)
  block_per_row: int
  max_memory_bytes: int
  compile_threads: int


def gpu_plan(memory_bytes: int) -> Plan:
  # In order of interest (compiled and timed in this order; the report sorts by length): the
  # headline lengths first, so a run cut short by its time budget still has them.
  lengths = (4096, 32768, 16384, 8192, 65536, 2048, 1024)
  return Plan(
    check_dtypes=("float32", "bfloat16"),
    check_modes=("full", "sparse"),
    block_sizes=(32, 64),
    check_sizes=_device_cases.CheckSizes(blocks=6, heads=2, head_dim=64),
    speed_dtypes=("bfloat16", "float32"),
    speed_shapes=tuple((1, 8, L, 64) for L in lengths) + ((8, 12, 4096, 64),),
    block_per_row=8,
    max_memory_bytes=int(0.9 * memory_bytes),
    compile_threads=min(12, os.cpu_count() or 1),
  )


def quick_plan() -> Plan:
  return Plan(
    check_dtypes=("float32",),
    check_modes=("full",),
    block_sizes=(32,),
    check_sizes=_device_cases.CheckSizes(blocks=3, heads=1, head_dim=16),
    speed_dtypes=("bfloat16",),
    speed_shapes=((1, 2, 256, 16),),
    block_per_row=2,
    max_memory_bytes=2**31,
    compile_threads=2,
  )


def repeats_for(length: int) -> int:
  """Timed runs after one warm-up: fewer on long sequences, where one run says enough."""
  return 10 if length <= 8192 else 5 if length <= 16384 else 3


def source_state() -> dict[str, Any]:
  """Which code ran: the git commit and dirtiness, else the stamp that travels with `.whl/`."""
  try:
    commit, dirty = source_stamp.git_state(REPO_ROOT)
    return {"commit": commit, "dirty": dirty, "commit_source": "git"}
  except RuntimeError:
    pass
  try:
    stamp = source_stamp.read_stamp(REPO_ROOT / ".whl")
  except (OSError, ValueError) as error:
    return {"commit": None, "dirty": None, "commit_source": f"unknown ({error})"}
  return {
    "commit": stamp["commit"],
    "dirty": stamp["dirty"],
    "commit_source": f".whl/{source_stamp.STAMP_NAME} written {stamp['written']}",
  }


def environment() -> dict[str, Any]:
  device = jax.devices()[0]
  versions = {}
  for name in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "numpy"):
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return {
    "device": device.device_kind,
    "platform": device.platform,
    "device_count": jax.device_count(),
    "jax": jax.__version__,
    "jaxlib": versions.get("jaxlib"),
    "versions": versions,
    "python": sys.version.split()[0],
    **source_state(),
  }


@dataclasses.dataclass
class Job:
  """One program: built and compiled (in a thread), then run."""

  name: str
  fn: Callable[..., Any]
  specs: tuple[jax.ShapeDtypeStruct, ...]
  matmul_precision: str | None = None  # jax's default precision while tracing
  compiled: Any = None
  compile_seconds: float | None = None
  temp_bytes: int | None = None
  error: str | None = None
  # Compiled alone, after the others: XLA autotunes a dense L x L product on buffers of that
  # size, which several threads at once would not fit on the device.
  alone: bool = False

  def compile(self, deadline: float = float("inf")) -> None:
    if time.perf_counter() > deadline:
      self.error = "skipped: time budget spent before compiling"
      return
    try:
      with jax.default_matmul_precision(self.matmul_precision):
        self.compiled, self.compile_seconds, self.temp_bytes = _timing.compile_program(
          self.fn, self.specs
        )
    except Exception as e:  # pylint: disable=broad-except
      self.error = f"compile: {type(e).__name__}: {e}"[:400]


def compile_all(
  jobs: list[Job], threads: int, label: str, clock: Callable[[], str], deadline: float
) -> None:
  """Compiles `jobs` in `threads` threads (the `alone` ones one at a time, last), printing
  progress and an ETA; jobs not started by `deadline` are marked skipped."""
  start, done = time.perf_counter(), 0

  def progress(_=None):
    nonlocal done
    done += 1
    if done % max(1, len(jobs) // 8) == 0 or done == len(jobs):
      eta = (time.perf_counter() - start) / done * (len(jobs) - done)
      print(f"{clock()} {label}: compiled {done}/{len(jobs)}, ETA {eta:.0f}s", flush=True)

  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    futures = [pool.submit(job.compile, deadline) for job in jobs if not job.alone]
    for _ in concurrent.futures.as_completed(futures):
      progress()
  for job in jobs:
    if job.alone:
      job.compile(deadline)
      progress()


# ----------------------------------------------------------------------------- correctness


def check_jobs(plan: Plan) -> list[tuple[dict[str, Any], Job, Job, dict[str, jax.Array]]]:
  """Every (case, program, reference program, inputs) of the correctness part."""
  cases = []
  for block_size in plan.block_sizes:
    for dtype in plan.check_dtypes:
      variants = []
      for implementation in GPU_IMPLEMENTATIONS:
        precisions = (None,)
        if implementation == "pallas_triton" and dtype == "float32":
          precisions = _device_cases.f32_precisions()
        variants += [(implementation, p) for p in precisions]
      targets = [("block_sparse_attention", None)]
      for mode in (*plan.check_modes, "causal"):
        # MRA-2-s and causal MRA-2 differ from MRA-2 in the state and the tiles: one block
        # size suffices.
        if mode == "full" or block_size == plan.block_sizes[0]:
          targets.append(("mra_attention", mode))
      for target, mode in targets:
        op = target == "block_sparse_attention"
        inputs = (_device_cases.op_inputs if op else _device_cases.mra_inputs)(
          jnp.dtype(dtype), block_size, plan.check_sizes
        )
        specs = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs.values())
        names = _device_cases.OP_OUTPUTS if op else _device_cases.MRA_OUTPUTS

        def make(implementation, options, precision_context):
          if op:
            program = _device_cases.op_program(implementation, block_size, options)
          elif mode == "causal":
            causal_options = {**options, "is_causal": True}
            program = _device_cases.mra_program(implementation, block_size, "full", causal_options)
          else:
            program = _device_cases.mra_program(implementation, block_size, mode, options)
          return Job(f"{target} {implementation}", program, specs, precision_context)

        # The reference at float32 precision; MRA's own jnp parts (pooling, selection, low
        # resolution) run at that precision on both sides, so both select the same tiles.
        reference = make("reference", {}, "highest")
        for implementation, precision in variants:
          options = {} if precision is None else {"precision": precision}
          context = None if op else "highest"
          default_is_f32 = context == "highest" or jax.default_backend() == "cpu"
          tol, kind = _device_cases.tolerance(dtype, implementation, precision, default_is_f32)
          case = dict(
            target=target if op else f"mra_attention ({_MODE_LABELS[mode]})",
            implementation=implementation,
            dtype=dtype,
            block_size=block_size,
            precision=None if precision is None else str(precision),
            dots=kind,
            tolerance=tol,
            outputs=names,
          )
          job = make(implementation, options, context)
          cases.append((case, job, reference, inputs))
  return cases


def run_checks(plan: Plan, clock) -> list[dict[str, Any]]:
  cases = check_jobs(plan)
  references = {id(ref): ref for _, _, ref, _ in cases}
  jobs = [job for _, job, _, _ in cases] + list(references.values())
  compile_all(jobs, plan.compile_threads, "correctness", clock, deadline=float("inf"))
  rows, results = [], {}
  for case, job, reference, inputs in cases:
    args = tuple(inputs.values())
    row = dict(case, status="ok")
    try:
      if id(reference) not in results:
        if reference.error:
          raise RuntimeError(f"reference {reference.error}")
        results[id(reference)] = jax.device_get(reference.compiled(*args))
      if job.error:
        raise RuntimeError(job.error)
      got = jax.device_get(job.compiled(*args))
      errors = {
        name: _device_cases.relative_error(g, w)
        for name, g, w in zip(case["outputs"], got, results[id(reference)])
      }
      row["errors"] = errors
      row["max_error"] = max(errors.values())
      if not row["max_error"] <= case["tolerance"]:
        row["status"] = "MISMATCH"
    except Exception as e:  # pylint: disable=broad-except
      row.update(status="error", error=f"{type(e).__name__}: {e}"[:400])
    del row["outputs"]
    rows.append(row)
    print(f"{clock()} {_device_report.check_line(row)}", flush=True)
  return rows


# ----------------------------------------------------------------------------------- speed


def speed_jobs(plan: Plan, on_gpu: bool) -> list[tuple[dict[str, Any], Job]]:
  """One job per (shape, method, dtype, pass), the dense ones first within a shape."""
  jobs = []
  for B, H, L, D in plan.speed_shapes:
    for dtype in plan.speed_dtypes:
      spec = jax.ShapeDtypeStruct((B, L, H, D), jnp.dtype(dtype))
      methods = {}
      for dense in ("cudnn", "xla"):
        if dense == "cudnn" and dtype == "float32":
          continue  # cuDNN's attention takes half precision only
        methods[f"dense {dense}"] = lambda q, k, v, dense=dense: jax.nn.dot_product_attention(
          q, k, v, implementation=dense
        )
      for mode, label in (("full", "MRA-2"), ("sparse", "MRA-2-s")):
        methods[label] = lambda q, k, v, mode=mode: mra_jax.mra_attention(
          q, k, v, block_size=32, block_per_row=plan.block_per_row, approx_mode=mode
        )
      for method, attend in methods.items():
        for kind, fn in (("fwd", attend), ("fwd+bwd", _timing.fwd_bwd(attend))):
          row = {"B": B, "H": H, "L": L, "D": D, "dtype": dtype, "method": method, "pass": kind}
          job = Job(f"{method} {dtype} L={L} {kind}", fn, (spec, spec, spec))
          if method == "dense cudnn" and not on_gpu:
            job.error = "skipped: cuDNN needs a GPU"
          elif method.startswith("dense") and _dense_cannot_fit(B, H, L, plan):
            job.error = "skipped: one float32 L x L score matrix exceeds the device memory"
          job.alone = method == "dense xla" and 4 * B * H * L * L > _ALONE_BYTES
          jobs.append((row, job))
  return jobs + _device_causal.speed_jobs(plan, on_gpu, Job)


_ALONE_BYTES = 4 * 2**30


def _dense_cannot_fit(B: int, H: int, L: int, plan: Plan) -> bool:
  return 4 * B * H * L * L > plan.max_memory_bytes


def run_speed(
  plan: Plan, on_gpu: bool, clock, deadline: float, save: Callable[[list], None]
) -> list[dict[str, Any]]:
  """Compiles, then times every speed job; `save(rows)` is called with the rows so far.

  Compiling stops starting new programs at 3/4 of the time left before `deadline`, so
  the programs already compiled still get timed; timing stops at `deadline`.
  """
  compile_deadline = time.perf_counter() + 0.75 * (deadline - time.perf_counter())
  pairs = speed_jobs(plan, on_gpu)
  todo = [job for _, job in pairs if job.error is None]
  compile_all(todo, plan.compile_threads, "speed", clock, compile_deadline)
  rows, inputs = [], {}
  start, timed = time.perf_counter(), 0
  for row, job in pairs:
    shape = (row["B"], row["L"], row["H"], row["D"], row["dtype"])
    given = row.pop("inputs", None)  # decode rows bring their own (a filled cache)
    if given is None and shape not in inputs:
      inputs.clear()  # free the previous shape's arrays
      inputs[shape] = _timing.random_qkv(shape[:4])
      inputs[shape] = tuple(x.astype(row["dtype"]) for x in inputs[shape])
    if row["method"].startswith("MRA") and row["pass"] != "decode":
      budget = mra_jax.MraConfig(block_per_row=plan.block_per_row).budget(
        row["L"] // 32, row["L"] // 32
      )
      if row["pass"].startswith("causal"):
        budget = _device_causal.causal_tiles(row["L"], plan.block_per_row)
      row["tiles_per_head"] = budget
      row["hi_res_flops"] = _timing.selected_tile_flops(row["B"], row["H"], budget, 32, row["D"])
    row["implementation"] = _implementation(row["method"])
    if job.error:
      row.update(status="error" if job.error.startswith("compile") else "skipped", error=job.error)
    elif job.temp_bytes > plan.max_memory_bytes:
      row.update(status="too_big", temp_bytes=job.temp_bytes)
    elif time.perf_counter() > deadline:
      row.update(status="skipped", error="skipped: time budget spent")
    else:
      m = _timing.time_compiled(
        job.compiled,
        inputs[shape] if given is None else given,
        repeats=repeats_for(row["L"]),
        max_call_seconds=10.0,
        temp_bytes=job.temp_bytes,
        compile_seconds=job.compile_seconds,
      )
      row.update(status=m.status, seconds=m.seconds, min_seconds=m.min_seconds)
      row.update(
        temp_bytes=m.temp_bytes, peak_bytes=m.peak_bytes, compile_seconds=m.compile_seconds
      )
      if m.error:
        row["error"] = m.error
      timed += 1
    rows.append(row)
    if len(rows) % 8 == 0 or len(rows) == len(pairs):
      spent = time.perf_counter() - start
      print(
        f"{clock()} speed: {len(rows)}/{len(pairs)} rows ({timed} timed), "
        f"ETA {spent / len(rows) * (len(pairs) - len(rows)):.0f}s",
        flush=True,
      )
      _device_report.add_ratios(rows)
      save(rows)
  _device_report.add_ratios(rows)
  return sorted(rows, key=_device_report.shape_order)


def _implementation(method: str) -> str:
  if method.startswith("dense"):
    return method.split()[1]
  return api.resolve_implementation("auto")


# ------------------------------------------------------------------------------------ main


def _parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="folder for device_check.json and .md")
  p.add_argument("--quick", action="store_true", help="CPU smoke run: interpret mode, tiny sizes")
  p.add_argument("--skip_speed", action="store_true", help="correctness only")
  p.add_argument(
    "--compile_threads",
    type=int,
    default=0,
    help="threads compiling at once; 0: the plan's (12 on a GPU, 2 with --quick), 1: serial",
  )
  p.add_argument(
    "--time_budget_s",
    type=float,
    default=170.0,
    help="speed rows still untimed when this much time has passed are marked skipped",
  )
  return p.parse_args(argv)


def _check_libraries() -> str | None:
  """Why the libraries cannot be imported here, or None."""
  if _IMPORT_ERROR is None:
    return None
  return f"missing package {_IMPORT_ERROR.name!r} ({_IMPORT_ERROR}); {INSTALL_HINT}"


def main(argv=None) -> int:
  args = _parse_args(argv)
  start = time.perf_counter()
  clock = lambda: f"[{time.perf_counter() - start:5.1f}s]"
  problem = _check_libraries()
  if problem:
    print(f"device_check: {problem}", file=sys.stderr)
    return 2
  on_gpu = jax.default_backend() == "gpu"
  if not on_gpu and not args.quick:
    print(
      f"device_check: no GPU here (jax's default backend is {jax.default_backend()!r}, devices "
      f"{jax.devices()}); run on a GPU machine, or pass --quick for the CPU smoke run",
      file=sys.stderr,
    )
    return 2
  stats = jax.devices()[0].memory_stats() or {}
  plan = quick_plan() if args.quick else gpu_plan(stats.get("bytes_limit", 80 * 2**30))
  if args.compile_threads:
    plan = dataclasses.replace(plan, compile_threads=args.compile_threads)
  env = environment()
  print(f"{clock()} {json.dumps(env)}", flush=True)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  def save(checks, speed, complete=False):
    # Written after each stage, so a run cut short by a timeout still leaves its results.
    final = jax.devices()[0].memory_stats() or {}
    report = dict(
      environment=env,
      quick=args.quick,
      complete=complete,
      seconds=time.perf_counter() - start,
      device_peak_bytes=final.get("peak_bytes_in_use"),
      mismatches=sum(row["status"] == "MISMATCH" for row in checks),
      check_errors=sum(row["status"] == "error" for row in checks),
      checks=checks,
      speed=speed,
    )
    (out / "device_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "device_check.md").write_text(_device_report.markdown(report))
    return report

  checks = run_checks(plan, clock)
  save(checks, [])
  speed = []
  if not args.skip_speed:
    deadline = start + args.time_budget_s
    speed = run_speed(plan, on_gpu, clock, deadline, save=lambda rows: save(checks, rows))
  report = save(checks, speed, complete=True)
  print(
    f"{clock()} {report['mismatches']} mismatches, {report['check_errors']} checks that failed "
    f"to run; wrote {out}/device_check.{{json,md}}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
