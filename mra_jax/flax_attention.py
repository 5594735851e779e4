"""MRA as a Flax `attention_fn`, for `nn.MultiHeadDotProductAttention` and `nnx.MultiHeadAttention`.

Flax passes a pairwise mask `[B, 1|H, Lq, Lk]`; MRA needs per-token padding masks.
A padding mask built as `make_attention_mask(q_valid, k_valid)` factorises exactly,
so the query and key masks are recovered as "any" over the other axis. A mask that
does not factorise (causal, or any other pattern) cannot be honoured: it is refused
when its values are known (outside `jit`); inside `jit` values are unknown, so pass
only padding masks there.
"""
# pylint: disable=invalid-name

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mra_jax import attention, knobs


def make_attention_fn(
  config: attention.MraConfig | None = None, **mra_knobs: Any
) -> Callable[..., jax.Array]:
  """Returns an `attention_fn` for Flax attention modules that computes MRA.

  Args:
    config: the MRA knobs as an `MraConfig` (default: `MraConfig()`).
    **mra_knobs: `MraConfig` fields (`block_size`, `block_per_row`, ...), replacing the
      config's; validated now.

  Returns:
    `fn(query, key, value, bias=None, mask=None, ..., deterministic=..., dtype=...)`
    with Flax's signature: query/key/value `[B, L, H, D]`, mask `[B, 1|H, Lq, Lk]`
    bool (True = attend). Output `[B, Lq, H, D]` in `dtype` (default: query's).
    It raises ValueError for what MRA cannot honour: a `bias`, attention dropout
    while training, `is_causal=True`, a mask that is not a padding mask.
  """
  config = knobs.make(attention.MraConfig, mra_knobs, base=config)

  def attention_fn(
    query,
    key,
    value,
    bias=None,
    mask=None,
    broadcast_dropout=True,
    dropout_rng=None,
    dropout_rate=0.0,
    deterministic=False,
    dtype=None,
    precision=None,
    module=None,
    is_causal=False,
  ):
    del broadcast_dropout, dropout_rng, precision
    if bias is not None:
      raise ValueError(
        f"MRA attention cannot add an attention bias; got bias with shape={jnp.shape(bias)}"
      )
    if dropout_rate > 0.0 and not deterministic:
      raise ValueError(
        "MRA attention has no attention dropout; got "
        f"dropout_rate={dropout_rate} with deterministic={deterministic} "
        "(set dropout_rate=0 or run deterministically)"
      )
    if is_causal:
      raise ValueError("MRA attention has no causal variant yet; got is_causal=True")
    if module is not None:
      raise ValueError(
        "MRA attention never forms attention weights, so it cannot sow them; "
        "call the module with sow_weights=False"
      )
    q_valid, k_valid = _padding_masks(mask, query.shape, key.shape)
    out = attention.mra_attention(query, key, value, q_valid, key_mask=k_valid, config=config)
    return out.astype(dtype or query.dtype)

  return attention_fn


def _padding_masks(mask, q_shape, k_shape):
  """Flax pairwise mask [B, 1|H, Lq|1, Lk|1] -> (query mask [B, Lq], key mask [B, Lk])."""
  if mask is None:
    return None, None
  B, Lq, Lk = q_shape[0], q_shape[1], k_shape[1]
  mask = jnp.asarray(mask)
  if (
    mask.ndim != 4
    or mask.shape[0] not in (1, B)
    or mask.shape[2] not in (1, Lq)
    or mask.shape[3] not in (1, Lk)
  ):
    raise ValueError(
      f"mask must be [batch, 1|heads, q_length, kv_length] = [{B}, 1|H, {Lq}, "
      f"{Lk}] (dims of size 1 broadcast); got mask.shape={mask.shape}"
    )
  mask = jnp.broadcast_to(mask.astype(bool), (B, mask.shape[1], Lq, Lk))
  q_valid = jnp.any(mask, axis=(1, 3))
  k_valid = jnp.any(mask, axis=(1, 2))
  if not isinstance(mask, jax.core.Tracer):
    rebuilt = q_valid[:, None, :, None] & k_valid[:, None, None, :]
    if not np.array_equal(np.asarray(mask), np.broadcast_to(np.asarray(rebuilt), mask.shape)):
      raise ValueError(
        "mask is not a padding mask (it does not factorise into query and key "
        "validity, e.g. a causal mask); MRA attention honours padding only"
      )
  return q_valid, k_valid
