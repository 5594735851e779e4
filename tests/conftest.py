"""Test-wide JAX settings, applied before JAX initialises its backends.

Four simulated CPU devices let the pmap / sharding / data-parallel tests run on a
CPU-only machine (the Flax CI pattern).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()

import jax  # noqa: E402  (XLA_FLAGS must be set before jax starts)

jax.config.update("jax_numpy_rank_promotion", "raise")
