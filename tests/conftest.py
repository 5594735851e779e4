"""Test-wide JAX settings, applied before JAX initialises its backends.

Four simulated CPU devices let the pmap / sharding / data-parallel tests run on a CPU-only
machine (the Flax CI pattern); the CPU compiler skips its costly optimisations.
`JAX_PLATFORMS=cpu` also lets the compile-only TPU and GPU clients register
(`pallas_kernels.compile_only`); the fixtures `tpu_compile` and `cuda_compile` skip a test when
those are not installed, and fail it under CI (`CI=true`), where `.ci/run` installs them.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if os.environ["JAX_PLATFORMS"] == "cpu":
  # Without a TPU VM around it, libtpu asks the cloud metadata server who it is and warns at
  # length; these answer it for the compile-only client.
  for _name, _value in (
    ("TPU_SKIP_MDS_QUERY", "1"),
    ("TPU_WORKER_HOSTNAMES", "localhost"),
    ("TPU_ACCELERATOR_TYPE", "v5litepod-4"),
    # libtpu takes a machine-wide lockfile, so a second process (another pytest-xdist worker)
    # would fail to load it; the compile-only client touches no chip, so sharing is safe.
    ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
  ):
    os.environ.setdefault(_name, _value)
# Tests compile thousands of small programs and run each once or twice, so the CPU backend's
# LLVM optimisation costs more than it saves: without it the suite takes about half the time.
# (Subprocess tests inherit the flags; compiles for real TPU and GPU targets restore the
# defaults, `compile_only.compile`.) A flag already in XLA_FLAGS is left as it is.
_FLAGS = {
  "--xla_force_host_platform_device_count": "4",
  "--xla_backend_optimization_level": "0",
  "--xla_llvm_disable_expensive_passes": "true",
}
_flags = os.environ.get("XLA_FLAGS", "")
for _flag, _value in _FLAGS.items():
  if _flag not in _flags:
    _flags = f"{_flags} {_flag}={_value}".strip()
os.environ["XLA_FLAGS"] = _flags

import jax  # noqa: E402  (XLA_FLAGS must be set before jax starts)
import pytest  # noqa: E402

from pallas_kernels import compile_only  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def _require_compile_target(platform: str) -> None:
  reason = compile_only.missing(platform)
  if reason is None:
    return
  if os.environ.get("CI") == "true":
    pytest.fail(f"CI compiles for {platform} targets, but {reason}")
  pytest.skip(f"no compile-only {platform} target: {reason}")


@pytest.fixture
def tpu_compile():
  """Skips (fails under CI) unless TPU topologies can be compiled for here."""
  _require_compile_target("tpu")


@pytest.fixture
def cuda_compile():
  """Skips (fails under CI) unless an H100 can be compiled for here."""
  _require_compile_target("cuda")
