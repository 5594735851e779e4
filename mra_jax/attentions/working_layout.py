"""The float32 [B, H, L, D] layout every attention of the registry computes in.

`prepare` checks the [B, L, H, D] inputs and converts them (padded positions zeroed),
`finish` converts a result back, and `pad_axis` pads L up to a multiple of a block or
chunk size.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import jax
import jax.numpy as jnp


def prepare(
  query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Checks shapes and returns float32 [B, H, L, D] tensors and a bool [B, L] mask.

  Padded positions are zeroed in q, k and v so that whatever garbage they held
  (even inf or NaN) cannot reach a real output through a 0 * x product.

  Args:
    query: [B, L, H, D], any float dtype.
    key: [B, L, H, D], the shape of query (self-attention patterns).
    value: [B, L, H, Dv].
    mask: optional [B, L] bool or 0/1, True = real token; None means all real.

  Returns:
    (q_BxHxLxD, k_BxHxLxD, v_BxHxLxDv) float32 and mask_BxL bool.

  Raises:
    ValueError: a shape that does not fit, naming the argument and its shape.
  """
  for name, x in (("query", query), ("key", key), ("value", value)):
    if x.ndim != 4:
      raise ValueError(f"{name} must be [B, L, H, D]; got {name}.shape={x.shape}")
  if key.shape != query.shape:
    raise ValueError(
      "sparse self-attention patterns need key.shape == query.shape; got "
      f"key.shape={key.shape}, query.shape={query.shape}"
    )
  if value.shape[:3] != query.shape[:3]:
    raise ValueError(
      f"value must be [B, L, H, Dv] like query; got value.shape={value.shape}, "
      f"query.shape={query.shape}"
    )
  b, length = query.shape[:2]
  if mask is None:
    mask_BxL = jnp.ones((b, length), bool)
  else:
    if mask.shape != (b, length):
      raise ValueError(f"mask must be [B, L] = {(b, length)}; got mask.shape={mask.shape}")
    mask_BxL = mask.astype(bool)
  keep = mask_BxL[:, :, None, None]

  def to_bhld(x):
    x = jnp.where(keep, x.astype(jnp.float32), 0.0)
    return jnp.transpose(x, (0, 2, 1, 3))

  return to_bhld(query), to_bhld(key), to_bhld(value), mask_BxL


def finish(o_BxHxLxD: jax.Array, mask_BxL: jax.Array, dtype) -> jax.Array:
  """Back to [B, L, H, D] in `dtype`, cut to the mask's length, padded queries 0."""
  length = mask_BxL.shape[1]
  o_BxLxHxD = jnp.transpose(o_BxHxLxD[:, :, :length], (0, 2, 1, 3))
  return jnp.where(mask_BxL[:, :, None, None], o_BxLxHxD, 0.0).astype(dtype)


def pad_axis(x: jax.Array, multiple: int, axis: int) -> jax.Array:
  """Zero-pads `axis` of x up to a multiple of `multiple`."""
  extra = -x.shape[axis] % multiple
  if not extra:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths)
