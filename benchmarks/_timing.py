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
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_seconds = time.perf_counter() - start
    temp = compiled.memory_analysis().temp_size_in_bytes
  except Exception as e:  # pylint: disable=broad-except
    return Measurement("error", error=f"compile: {type(e).__name__}: {e}"[:500])
  if temp > max_temp_bytes:
    return Measurement("too_big", temp_bytes=temp, compile_seconds=compile_seconds)
  try:
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    warm = time.perf_counter() - start
    if warm > max_call_seconds:
      return Measurement(
        "too_slow",
        seconds=warm,
        all_seconds=[warm],
        temp_bytes=temp,
        peak_bytes=_peak_bytes(),
        compile_seconds=compile_seconds,
      )
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - start)
  except Exception as e:  # pylint: disable=broad-except
    return Measurement(
      "error",
      temp_bytes=temp,
      compile_seconds=compile_seconds,
      error=f"run: {type(e).__name__}: {e}"[:500],
    )
  return Measurement(
    "ok",
    seconds=statistics.median(times),
    min_seconds=min(times),
    all_seconds=times,
    temp_bytes=temp,
    peak_bytes=_peak_bytes(),
    compile_seconds=compile_seconds,
  )


def random_qkv(
  shape: tuple[int, int, int, int], seed: int = 0
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Standard-normal float32 q, k, v of `shape` [B, L, H, D]."""
  keys = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(key, shape, jnp.float32) for key in keys)
