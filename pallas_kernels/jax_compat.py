"""What differs between the jax versions we support (0.10.2 and 0.11.x), in one place.

Two things changed in jax 0.11 that touch this package:

* Lowering a Pallas Triton kernel for "cuda" needs to know the target GPU. jax 0.10 assumed
  compute capability 9.0 when no GPU was present; jax 0.11 raises "No supported GPU devices
  found, please specify an abstract GPU device" instead, and reads the target from the
  abstract mesh's `AbstractDevice`. `abstract_gpu()` provides one; it is harmless on 0.10
  (which ignores it) and on a machine with a GPU (whose own kind wins when it matches).
* The Pallas Triton lowering is deprecated: each lowering of a `pallas_call` with
  `pltriton.CompilerParams` for a GPU emits a `DeprecationWarning` (jax id
  "jax-pallas-triton"). It fires when the *outer* `jit` lowers, far from our call site, and
  nothing a user of this package can do removes it, so `ignore_triton_deprecation()` filters
  exactly that message; the Triton implementation installs it on import. A Mosaic GPU
  implementation is the way off Triton. pytest resets warning filters per test, so the test
  configuration (setup.cfg `filterwarnings`) carries the same message.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator

import jax

JAX_VERSION: tuple[int, ...] = tuple(jax.__version_info__)
# jax 0.11 reads the Triton target from the abstract mesh and deprecates Pallas Triton.
TRITON_NEEDS_ABSTRACT_GPU = JAX_VERSION >= (0, 11)
TRITON_DEPRECATION_MESSAGE = "The Pallas Triton backend is deprecated"
# The device kind jax 0.11 maps to compute capability 9.0 (sm_90): the same target jax 0.10
# assumed without a GPU. An H200 has the same SM.
DEFAULT_GPU_KIND = "NVIDIA H100 80GB HBM3"


@contextlib.contextmanager
def abstract_gpu(device_kind: str = DEFAULT_GPU_KIND) -> Iterator[None]:
  """Context in which Pallas Triton kernels lower for `device_kind` without a GPU present.

  Wrap `jax.jit(f).trace(...).lower(lowering_platforms=("cuda",))` (or its compile) in it.
  The abstract mesh has one Explicit axis of size 1, so it shards nothing.

  Args:
    device_kind: a GPU device kind jax knows, e.g. "NVIDIA H100 80GB HBM3", "NVIDIA H200".
  """
  if not isinstance(device_kind, str) or not device_kind:
    raise ValueError(f"device_kind must be a non-empty string, got {device_kind=}")
  device = jax.sharding.AbstractDevice(device_kind=device_kind, num_cores=None, platform="cuda")
  mesh = jax.sharding.AbstractMesh(
    (1,), ("_abstract_gpu",), (jax.sharding.AxisType.Explicit,), abstract_device=device
  )
  with jax.sharding.use_abstract_mesh(mesh):
    yield


def ignore_triton_deprecation() -> None:
  """Hides jax 0.11's Pallas Triton `DeprecationWarning` (that message only); idempotent."""
  warnings.filterwarnings(
    "ignore", message=re.escape(TRITON_DEPRECATION_MESSAGE), category=DeprecationWarning
  )
