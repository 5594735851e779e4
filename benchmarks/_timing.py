"""Compile, size and time one attention call: forward only or forward+backward.

Memory is checked from the compiled program before anything runs, so a method that
would not fit is reported instead of crashing the sweep.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass
class Measurement:
  """What one (method, shape) cell produced.

  Attributes:
    status: "ok", "too_big" (compiled temp memory over budget), "too_slow" (the warm-up
      call alone took longer than the time limit; its time is still reported), or
      "error" (build/compile/run raised; see `error`).
    seconds: median of the timed runs (the warm-up time for "too_slow"), else None.
    min_seconds: fastest timed run (less sensitive to a shared, busy machine).
    all_seconds: every timed run.
    temp_bytes: XLA's compiled temporary buffer size, None if compilation failed.
    peak_bytes: the device allocator's peak after the runs where it reports one (GPU/TPU).
    compile_seconds: lowering + compilation time.
    error: the exception text for "error".
  """

  status: str
  seconds: float | None = None
  min_seconds: float | None = None
  all_seconds: list[float] = dataclasses.field(default_factory=list)
  temp_bytes: int | None = None
  peak_bytes: int | None = None
  compile_seconds: float | None = None
  error: str | None = None


def fwd_bwd(attend: Callable[..., jax.Array]) -> Callable[..., tuple[jax.Array, ...]]:
  """Gradients of `mean(attend(q, k, v))` in q, k, v: the paper's `out.mean()` backward."""
  return jax.grad(lambda q, k, v: jnp.mean(attend(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2))


def _peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats()
  if not stats:
    return None
  return stats.get("peak_bytes_in_use")


def compile_program(
  fn: Callable[..., object], arg_specs: tuple[jax.ShapeDtypeStruct | jax.Array, ...]
) -> tuple[jax.stages.Compiled, float, int]:
  """Lowers and compiles `fn` for `arg_specs` (shapes suffice): `(compiled, seconds, temp_bytes)`.

  Safe to call from several threads at once (XLA compiles outside the GIL), which is how
  `benchmarks.device_check` overlaps many compilations. Raises what jax raises.
  """
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*arg_specs).compile()
  seconds = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  temp = int(analysis.temp_size_in_bytes) if analysis is not None else 0
  return compiled, seconds, temp


def time_compiled(
  compiled: Callable[..., object],
  args: tuple[jax.Array, ...],
  *,
  repeats: int,
  max_call_seconds: float,
  temp_bytes: int | None = None,
  compile_seconds: float | None = None,
) -> Measurement:
  """Times an already compiled `compiled(*args)`: one warm-up call, then `repeats` runs.

  Failures while running are captured in the `Measurement`, never raised.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1; got {repeats=}")
  known = dict(temp_bytes=temp_bytes, compile_seconds=compile_seconds)
  try:
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    warm = time.perf_counter() - start
    if warm > max_call_seconds:
      return Measurement(
        "too_slow", seconds=warm, all_seconds=[warm], peak_bytes=_peak_bytes(), **known
      )
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - start)
  except Exception as e:  # pylint: disable=broad-except
    return Measurement("error", error=f"run: {type(e).__name__}: {e}"[:500], **known)
  return Measurement(
    "ok",
    seconds=statistics.median(times),
    min_seconds=min(times),
    all_seconds=times,
    peak_bytes=_peak_bytes(),
    **known,
  )


def measure(
  fn: Callable[..., object],
  args: tuple[jax.Array, ...],
  *,
  repeats: int,
  max_temp_bytes: int,
  max_call_seconds: float,
) -> Measurement:
  """Compiles `fn(*args)`, checks its memory, then times it after one warm-up call.

  Args:
    fn: the function to time (e.g. `fwd_bwd(attend)`).
    args: concrete inputs.
    repeats: timed runs after the warm-up; the median is reported.
    max_temp_bytes: compiled temporary memory above which nothing is run.
    max_call_seconds: a warm-up slower than this skips the timed runs.

  Returns:
    A `Measurement`; failures are captured in it, never raised.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1; got {repeats=}")
  try:
    compiled, compile_seconds, temp = compile_program(fn, args)
  except Exception as e:  # pylint: disable=broad-except
    return Measurement("error", error=f"compile: {type(e).__name__}: {e}"[:500])
  if temp > max_temp_bytes:
    return Measurement("too_big", temp_bytes=temp, compile_seconds=compile_seconds)
  return time_compiled(
    compiled,
    args,
    repeats=repeats,
    max_call_seconds=max_call_seconds,
    temp_bytes=temp,
    compile_seconds=compile_seconds,
  )


# FLOPs follow the flash-attention convention: QK^T and PV are 2 * Lq * Lk * D each; the
# backward is 2.5x the forward (its recomputation of QK^T not counted).
FWD_BWD_FLOP_FACTOR = 3.5


def dense_attention_flops(batch: int, heads: int, length: int, head_dim: int) -> float:
  """Forward FLOPs of dense self-attention over `length` tokens."""
  return 4.0 * batch * heads * length * length * head_dim


def selected_tile_flops(
  batch: int, heads: int, tiles_per_head: int, block_size: int, head_dim: int
) -> float:
  """Forward FLOPs of block-sparse attention over `tiles_per_head` selected tiles."""
  return 4.0 * batch * heads * tiles_per_head * block_size * block_size * head_dim


def random_qkv(
  shape: tuple[int, int, int, int], seed: int = 0
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Standard-normal float32 q, k, v of `shape` [B, L, H, D]."""
  keys = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(key, shape, jnp.float32) for key in keys)
