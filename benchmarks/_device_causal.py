"""`benchmarks.device_check`'s causal speed rows: prefill against cuDNN and XLA, and decode.

* Prefill (pass "causal fwd" / "causal fwd+bwd"): causal MRA-2 and MRA-2-s against
  `jax.nn.dot_product_attention(..., is_causal=True)` with cuDNN (half precision) and XLA, on
  the shapes of the bidirectional rows up to `MAX_PREFILL_LENGTH`.
* Decode (pass "decode"): the attention of one token at the end of a filled cache of L
  positions, `mra_jax.decode.attend_cached` against dense attention over the same cache
  (`benchmarks.causal`'s programs), float32, at `DECODE_LENGTHS`.

The ratios come from `_device_report.add_ratios`, which compares rows of the same shape and
pass measured in the same run.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import mra_jax
from benchmarks import _timing, causal

MAX_PREFILL_LENGTH = 16384
DECODE_LENGTHS = (16384, 65536)


def prefill_methods(block_per_row: int, dtype: str) -> dict[str, Any]:
  """{method: attend(q, k, v)} of the causal prefill rows of one dtype."""
  methods = {}
  for dense in ("cudnn", "xla"):
    if dense == "cudnn" and dtype == "float32":
      continue  # cuDNN's attention takes half precision only
    methods[f"dense {dense}"] = lambda q, k, v, dense=dense: jax.nn.dot_product_attention(
      q, k, v, is_causal=True, implementation=dense
    )
  for mode, label in (("full", "MRA-2"), ("sparse", "MRA-2-s")):
    methods[label] = lambda q, k, v, mode=mode: mra_jax.mra_attention(
      q, k, v, block_size=32, block_per_row=block_per_row, approx_mode=mode, is_causal=True
    )
  return methods


def causal_tiles(length: int, block_per_row: int, block_size: int = 32) -> int:
  """Tiles per head of causal MRA: each row's diagonal and its past picks."""
  config = mra_jax.MraConfig(is_causal=True, block_per_row=block_per_row, block_size=block_size)
  N = -(-length // block_size)
  per_row = config.row_budget(N)
  return sum(min(per_row, r + 1) for r in range(N))


def decode_programs(length: int, quick: bool) -> list[tuple[str, Any, tuple]]:
  """[(method, fn, concrete args)] of the decode rows at one context length."""
  if quick:  # CPU smoke run: a short cache, the same programs
    length = 256
  out = []
  for approx_mode, label in (("full", "MRA-2"), ("sparse", "MRA-2-s")):
    mra_step, dense_step, args = causal.decode_programs(length, approx_mode)
    out.append((label, mra_step, args))
    if approx_mode == "full":
      out.append(("dense xla", dense_step, args))
  return out


def speed_jobs(plan, on_gpu: bool, job_class) -> list[tuple[dict[str, Any], Any]]:
  """The causal rows of `device_check`'s plan, as (row, `job_class` job) pairs: prefill
  against cuDNN and XLA on its single-sequence shapes up to `MAX_PREFILL_LENGTH`, decode at
  `DECODE_LENGTHS` (one short length in the CPU smoke run)."""
  jobs = []
  for B, H, L, D in plan.speed_shapes:
    if L > MAX_PREFILL_LENGTH or B != 1:
      continue
    for dtype in plan.speed_dtypes:
      spec = jax.ShapeDtypeStruct((B, L, H, D), jnp.dtype(dtype))
      for method, attend in prefill_methods(plan.block_per_row, dtype).items():
        for kind, fn in (("causal fwd", attend), ("causal fwd+bwd", _timing.fwd_bwd(attend))):
          row = {"B": B, "H": H, "L": L, "D": D, "dtype": dtype, "method": method, "pass": kind}
          job = job_class(f"{method} {dtype} L={L} {kind}", fn, (spec, spec, spec))
          if method == "dense cudnn" and not on_gpu:
            job.error = "skipped: cuDNN needs a GPU"
          jobs.append((row, job))
  quick = plan.speed_shapes[0][2] < 1024
  for L in DECODE_LENGTHS[: 1 if quick else None]:
    for method, fn, args in decode_programs(L, quick):
      length = args[0].key.shape[1]
      row = {"B": 1, "H": 8, "L": length, "D": 64, "dtype": "float32", "method": method}
      job = job_class(f"{method} decode L={length}", fn, specs(args))
      jobs.append(({**row, "pass": "decode", "inputs": args}, job))
  return jobs


def specs(args) -> Any:
  """ShapeDtypeStructs of a pytree of arrays (what `Job` compiles for)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype), args)
