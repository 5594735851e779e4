"""Block-sparse attention with an initial softmax state: the high-resolution core of MRA.

For every query i of query block r, with S(i) the keys of the key blocks c whose tile
(r, c) is selected, and (m0, l0, acc0) an initial online-softmax state (MRA-2 passes its
low-resolution term here, MRA-2-s passes an empty state):

    m_i   = max(m0_i, max_{j in S(i)} s_ij)                  s_ij = scale * q_i . k_j
    l_i   = l0_i   exp(m0_i - m_i) + sum_{j in S(i)} exp(s_ij - m_i)
    acc_i = acc0_i exp(m0_i - m_i) + sum_{j in S(i)} exp(s_ij - m_i) v_j
    out_i = acc_i / (l_i + eps)
    lse_i = m_i + log(l_i + eps)

`eps` is the published code's 1e-6 on the normaliser, taken on the scale of the running
maximum m_i, as there. The maximum carries no gradient (it cancels analytically); gradients
flow to q, k, v, l0 and acc0. Keys with `key_valid=False` get no weight.

This module holds the pure-`jnp` reference (`block_sparse_attention_reference`), written
for one head and lifted with `vmap`, computed in float32. Kernels are checked against it.

Tile ids are flat: t = r * Nk + c for query block r and key block c, int32, sorted
ascending within each (batch, head), without duplicates.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import jax
import jax.numpy as jnp

DEFAULT_EPS = 1e-6


def _one_head_reference(q_LqxD, k_LkxD, v_LkxD, tile_ids_K, key_valid_Lk, m0_Lq, l0_Lq,
                        acc0_LqxD, *, block_size: int, scale: float, eps: float):
  """The reference for one (batch, head); every array float32 except ids/mask."""
  Lq, D = q_LqxD.shape
  Lk = k_LkxD.shape[0]
  Nq, Nk, bs = Lq // block_size, Lk // block_size, block_size
  rows_K = tile_ids_K // Nk
  cols_K = tile_ids_K % Nk

  q_KxBsxD = q_LqxD.reshape(Nq, bs, D)[rows_K]
  k_KxBsxD = k_LkxD.reshape(Nk, bs, D)[cols_K]
  v_KxBsxD = v_LkxD.reshape(Nk, bs, D)[cols_K]
  valid_KxBs = key_valid_Lk.reshape(Nk, bs)[cols_K]

  s_KxBsxBs = jnp.einsum("kid,kjd->kij", q_KxBsxD, k_KxBsxD) * scale
  s_KxBsxBs = jnp.where(valid_KxBs[:, None, :], s_KxBsxBs, -jnp.inf)

  # The per-query maximum over every selected tile of its block row (the published
  # `index_max`), merged with the initial state's maximum.
  tile_max_KxBs = jnp.max(s_KxBsxBs, axis=-1)
  row_max_NqxBs = jax.ops.segment_max(
      tile_max_KxBs, rows_K, num_segments=Nq, indices_are_sorted=True)
  m_Lq = jnp.maximum(m0_Lq, row_max_NqxBs.reshape(Lq))
  m_Lq = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m_Lq), m_Lq, 0.0))
  m_NqxBs = m_Lq.reshape(Nq, bs)

  p_KxBsxBs = jnp.exp(s_KxBsxBs - m_NqxBs[rows_K][:, :, None])
  num_NqxBsxD = jax.ops.segment_sum(
      jnp.einsum("kij,kjd->kid", p_KxBsxBs, v_KxBsxD), rows_K, num_segments=Nq,
      indices_are_sorted=True)
  den_NqxBs = jax.ops.segment_sum(
      jnp.sum(p_KxBsxBs, axis=-1), rows_K, num_segments=Nq, indices_are_sorted=True)

  init_scale_Lq = jnp.exp(m0_Lq - m_Lq)
  l_Lq = l0_Lq * init_scale_Lq + den_NqxBs.reshape(Lq)
  acc_LqxD = acc0_LqxD * init_scale_Lq[:, None] + num_NqxBsxD.reshape(Lq, D)
  out_LqxD = acc_LqxD / (l_Lq + eps)[:, None]
  lse_Lq = m_Lq + jnp.log(l_Lq + eps)
  return out_LqxD, lse_Lq


def block_sparse_attention_reference(
    q_BxHxLqxD: jax.Array,
    k_BxHxLkxD: jax.Array,
    v_BxHxLkxD: jax.Array,
    tile_ids_BxHxK: jax.Array,
    key_valid_BxLk: jax.Array,
    m0_BxHxLq: jax.Array,
    l0_BxHxLq: jax.Array,
    acc0_BxHxLqxD: jax.Array,
    *,
    block_size: int,
    scale: float | None = None,
    eps: float = DEFAULT_EPS,
) -> tuple[jax.Array, jax.Array]:
  """Block-sparse attention from an initial softmax state, in pure `jnp` (see module doc).

  Args:
    q_BxHxLqxD: queries, any float dtype; Lq a multiple of `block_size`.
    k_BxHxLkxD: keys; Lk a multiple of `block_size`.
    v_BxHxLkxD: values.
    tile_ids_BxHxK: int32 flat tile ids `r * (Lk // block_size) + c`, sorted, unique.
    key_valid_BxLk: bool, False for padded keys (they get no weight).
    m0_BxHxLq: float32 initial running maximum (may be -inf: empty state).
    l0_BxHxLq: float32 initial normaliser, on the scale of `m0`.
    acc0_BxHxLqxD: float32 initial numerator, on the scale of `m0`.
    block_size: tokens per block (tile side).
    scale: logit scale; default `1 / sqrt(D)`.
    eps: added to the normaliser (the published code's 1e-6).

  Returns:
    `(out_BxHxLqxD, lse_BxHxLq)`, both float32.
  """
  D = q_BxHxLqxD.shape[-1]
  scale = D**-0.5 if scale is None else scale
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  one_head = lambda q, k, v, ids, valid, m0, l0, acc0: _one_head_reference(
      q, k, v, ids, valid, m0, l0, acc0, block_size=block_size, scale=scale, eps=eps)
  # heads share the key mask; batch elements share nothing.
  per_batch = jax.vmap(one_head, in_axes=(0, 0, 0, 0, None, 0, 0, 0))
  return jax.vmap(per_batch)(
      f32(q_BxHxLqxD), f32(k_BxHxLkxD), f32(v_BxHxLkxD), tile_ids_BxHxK,
      key_valid_BxLk.astype(bool), f32(m0_BxHxLq), f32(l0_BxHxLq), f32(acc0_BxHxLqxD))
