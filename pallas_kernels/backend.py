"""The one place where a backend name becomes a launcher.

* `"triton"`: the Pallas Triton lowering (GPU); on CPU it runs in interpret mode.
* `"mosaic_tpu"`: Mosaic with scalar prefetch (TPU); on CPU, interpret mode (`True`) or TPU
  interpret mode (`pltpu.InterpretParams()`).
* `"auto"`: the platform's own: gpu -> triton, tpu -> mosaic_tpu, anything else -> the triton
  kernel in interpret mode.
"""
# pylint: disable=invalid-name

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

BACKENDS = ("auto", "triton", "mosaic_tpu")
# Block sizes each backend's kernels are built and tested for.
BLOCK_SIZES = {"triton": (32, 64), "mosaic_tpu": (32, 64, 128)}


def resolve(backend: str, interpret: Any) -> tuple[str, Any]:
  """Returns `(backend, interpret)` with "auto" and `interpret=None` made concrete."""
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend=}")
  platform = jax.default_backend()
  if backend == "auto":
    backend = {"gpu": "triton", "cuda": "triton", "rocm": "triton", "tpu": "mosaic_tpu"}.get(
      platform, "triton"
    )
  if interpret is None:
    interpret = platform not in ("gpu", "cuda", "rocm", "tpu")
  return backend, interpret


def launcher(backend: str) -> Callable[..., Any]:
  """The `launch(kernel, call, *, interpret)` function of a resolved backend."""
  # Imported lazily: each lowering module is only needed where it is used.
  if backend == "triton":
    from pallas_kernels import block_sparse_triton  # pylint: disable=g-import-not-at-top

    return block_sparse_triton.launch
  if backend == "mosaic_tpu":
    from pallas_kernels import block_sparse_mosaic_tpu  # pylint: disable=g-import-not-at-top

    return block_sparse_mosaic_tpu.launch
  raise ValueError(f"no launcher for {backend=}")


def padded_head_dim(backend: str, head_dim: int) -> int:
  """The head dim the backend's kernels run at (inputs are zero-padded up to it)."""
  if backend == "triton":
    # Triton loads only power-of-two sizes, and its dot needs every dim >= 16.
    return max(16, 1 << (head_dim - 1).bit_length())
  return head_dim
