"""MRA as a Flax `attention_fn`, for `nn.MultiHeadDotProductAttention` and `nnx.MultiHeadAttention`.

Flax passes a pairwise mask `[B, 1|H, Lq, Lk]`; MRA needs per-token padding masks.
A padding mask built as `make_attention_mask(q_valid, k_valid)` factorises exactly,
so the query and key masks are recovered as "any" over the other axis. Causal attention
(`is_causal=True`, or an `MraConfig` with `is_causal=True`) also accepts the mask a decoder
passes, `combine_masks(make_causal_mask(x), make_attention_mask(valid, valid))`: its diagonal
is the padding mask. Any other pattern cannot be honoured: it is refused when its values
are known (outside `jit`); inside `jit` values are unknown, so pass only such masks there.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
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
    `is_causal=True` computes causal MRA (`MraConfig.is_causal`). It raises ValueError for
    what MRA cannot honour: a `bias`, attention dropout while training, a mask that is
    neither a padding mask nor (causal) a causal mask combined with one.
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
    run = dataclasses.replace(config, is_causal=True) if is_causal else config
    if module is not None:
      raise ValueError(
        "MRA attention never forms attention weights, so it cannot sow them; "
        "call the module with sow_weights=False"
      )
    if run.is_causal:
      q_valid = k_valid = _causal_padding_mask(mask, query.shape, key.shape)
    else:
      q_valid, k_valid = _padding_masks(mask, query.shape, key.shape)
    out = attention.mra_attention(query, key, value, q_valid, key_mask=k_valid, config=run)
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


def _causal_padding_mask(mask, q_shape, k_shape):
  """A Flax mask for causal attention [B, 1|H, L, L] -> the padding mask [B, L] (its
  diagonal), refused unless it is valid x valid, alone or with the causal tril (when its
  values are known)."""
  if mask is None:
    return None
  B, L = q_shape[0], q_shape[1]
  mask = jnp.asarray(mask)
  if mask.ndim != 4 or mask.shape[0] not in (1, B) or mask.shape[2:] != (L, k_shape[1]):
    raise ValueError(
      f"a causal mask must be [batch, 1|heads, length, length] = [{B}, 1|H, {L}, {L}]; got "
      f"mask.shape={mask.shape}"
    )
  mask = jnp.broadcast_to(mask.astype(bool), (B, mask.shape[1], L, L))
  valid = jnp.all(jnp.diagonal(mask, axis1=2, axis2=3), axis=1)
  if not isinstance(mask, jax.core.Tracer):
    padding = np.asarray(valid)[:, :, None] & np.asarray(valid)[:, None, :]
    given = np.asarray(mask)
    if not any(
      np.array_equal(given, np.broadcast_to(pattern[:, None], mask.shape))
      for pattern in (padding, np.tril(np.ones((L, L), bool))[None] & padding)
    ):
      raise ValueError(
        "with is_causal=True the mask must be a padding mask, or a causal mask combined with "
        "one (combine_masks(make_causal_mask(x), make_attention_mask(valid, valid))); got "
        "another pattern"
      )
  return valid
