"""A rough estimate of training activation memory, to warn before a run that will not fit.

The estimate counts what the backward pass keeps per layer (residual stream, projections,
FFN and the attention's own working set) for one micro-batch on one device. It is an order
of magnitude, not a promise: good enough to say "batch 256 at length 16384 will not fit".
"""

import logging
import os

import jax

# Keys each query attends to, per head, as a function of length; the default covers the
# linear and sparse baselines (a few hundred features, landmarks or window tokens).
_DEFAULT_KEYS_PER_QUERY = 256


def keys_per_query(attention: str, length: int, knobs) -> int:
  """Keys one query attends to under `attention` with its knobs dataclass `knobs`."""
  if attention == "softmax":
    return length
  if attention in ("mra2", "mra2_s"):
    return min(length, knobs.block_size * knobs.block_per_row) + length // knobs.block_size
  return min(length, _DEFAULT_KEYS_PER_QUERY)


def activation_bytes(
  *,
  micro_batch: int,
  length: int,
  num_layers: int,
  embed_dim: int,
  qkv_dim: int,
  mlp_dim: int,
  num_heads: int,
  attention: str,
  knobs,
  bytes_per_value: int,
) -> int:
  """Bytes of activations kept for the backward pass of one micro-batch."""
  per_token = 6 * embed_dim + 4 * qkv_dim + 3 * mlp_dim
  # Scores, probabilities and their gradient, per head (float32 whatever the compute dtype).
  attention_values = 3 * num_heads * keys_per_query(attention, length, knobs)
  per_layer = micro_batch * length * (per_token * bytes_per_value + attention_values * 4)
  return num_layers * per_layer + micro_batch * length * embed_dim * 4 * bytes_per_value


def available_bytes() -> int | None:
  """Memory of one local device (accelerators), or host RAM shared by CPU devices."""
  device = jax.local_devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  (backends without stats)
    stats = None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  try:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError):
    return None
  return ram // max(jax.local_device_count(), 1) if device.platform == "cpu" else None


def warn_if_too_large(estimate: int, available: int | None, *, what: str) -> bool:
  """Logs a warning and returns True when `estimate` exceeds 80 % of `available`."""
  if available is None or estimate <= 0.8 * available:
    return False
  logging.warning(
    "Out-of-memory risk: %s needs about %.1f GiB of activations per device, and a device "
    "has %.1f GiB. Raise --config.grad_accum_steps, lower --config.batch_size, or use "
    "--config.compute_dtype=bfloat16.",
    what,
    estimate / 2**30,
    available / 2**30,
  )
  return True
