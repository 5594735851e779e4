"""Backend-neutral Pallas kernel bodies for block-sparse attention (forward, dQ, dK/dV).

One body serves both lowerings; the launchers (`block_sparse_triton.py`,
`block_sparse_mosaic_tpu.py`) differ only in how the index arrays reach the kernel and in
`read_index(ref, g, i)`, the scalar read of entry `i` of head `g`'s index row (program ids
are read once at the kernel's top level: the HLO interpreter does not rewrite them inside
loop bodies).

Layouts (G = batch * heads, one program per (head, block)):

* forward and dQ, grid `(G, Nq)`: the program's query block `(bs, D)`, the whole head's K/V
  `(Lk, D)` (resident: VMEM on TPU, global memory on GPU) from which the row's key blocks
  are sliced with `pl.ds`, the key mask as rows `(Nk, bs)`, per-query vectors as
  columns `(bs, 1)`.
* dK/dV, grid `(G, Nk)`: the program's key block, the whole head's Q/dO, the key mask as a
  column `(bs, 1)`, per-query vectors (lse, delta) as rows `(Nq, bs)` so that the transposed
  score tile `(keys, queries)` broadcasts against them without an in-kernel transpose.

Every matmul is `A @ B` or `A @ B^T` (2-D, f32 accumulation): both lowerings take these.
Masked scores are a finite value and masked probabilities are zeroed explicitly, so rows with
no tile and no initial state give 0, never `inf - inf`.
"""
# pylint: disable=invalid-name

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

# Finite "minus infinity": exp(MASK - anything finite) == 0 and MASK - MASK == 0, no NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

ReadIndex = Callable[[Any, Any], jax.Array]


def _dot_nt(a_MxD, b_NxD, precision):
  """`a @ b^T` in float32."""
  return jax.lax.dot_general(
    a_MxD, b_NxD, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=jnp.float32
  )


def _dot_nn(a_MxK, b_KxN, precision):
  """`a @ b` in float32."""
  return jax.lax.dot_general(
    a_MxK, b_KxN, (((1,), (0,)), ((), ())), precision=precision, preferred_element_type=jnp.float32
  )


def forward_kernel(
  row_ptr_ref,
  cols_ref,
  q_ref,
  k_ref,
  v_ref,
  kmask_ref,
  m0_ref,
  l0_ref,
  acc0_ref,
  out_ref,
  lse_ref,
  *,
  read_index: ReadIndex,
  block_size: int,
  scale: float,
  eps: float,
  precision,
):
  """Online softmax over one query block's selected key blocks, from (m0, l0, acc0)."""
  bs = block_size
  g, r = pl.program_id(0), pl.program_id(1)
  start, stop = read_index(row_ptr_ref, g, r), read_index(row_ptr_ref, g, r + 1)
  q_BsxD = q_ref[...]
  m0_Bsx1 = m0_ref[...]
  # An empty initial state (m0 = -inf) starts at the finite mask value: its l0/acc0 weigh 0.
  m_Bsx1 = jnp.maximum(m0_Bsx1, MASK_VALUE)
  init_scale_Bsx1 = jnp.exp(m0_Bsx1 - m_Bsx1)
  l_Bsx1 = l0_ref[...] * init_scale_Bsx1
  acc_BsxD = acc0_ref[...] * init_scale_Bsx1

  def body(t, carry):
    m_Bsx1, l_Bsx1, acc_BsxD = carry
    c = read_index(cols_ref, g, t)
    k_BsxD = k_ref[pl.ds(pl.multiple_of(c * bs, bs), bs), :]
    v_BsxD = v_ref[pl.ds(pl.multiple_of(c * bs, bs), bs), :]
    valid_1xBs = kmask_ref[pl.ds(c, 1), :] > 0.5
    s_BsxBs = jnp.where(valid_1xBs, _dot_nt(q_BsxD, k_BsxD, precision) * scale, MASK_VALUE)
    m_new_Bsx1 = jnp.maximum(m_Bsx1, jnp.max(s_BsxBs, axis=1, keepdims=True))
    alpha_Bsx1 = jnp.exp(m_Bsx1 - m_new_Bsx1)
    # Zeroed explicitly: while every key so far is masked, s - m_new is 0, not -inf.
    p_BsxBs = jnp.where(valid_1xBs, jnp.exp(s_BsxBs - m_new_Bsx1), 0.0)
    l_Bsx1 = alpha_Bsx1 * l_Bsx1 + jnp.sum(p_BsxBs, axis=1, keepdims=True)
    acc_BsxD = alpha_Bsx1 * acc_BsxD + _dot_nn(p_BsxBs.astype(v_BsxD.dtype), v_BsxD, precision)
    return m_new_Bsx1, l_Bsx1, acc_BsxD

  m_Bsx1, l_Bsx1, acc_BsxD = jax.lax.fori_loop(start, stop, body, (m_Bsx1, l_Bsx1, acc_BsxD))
  # No valid key and no initial state: l = acc = 0, and the reference's maximum is 0.
  m_Bsx1 = jnp.where(m_Bsx1 > 0.5 * MASK_VALUE, m_Bsx1, 0.0)
  out_ref[...] = (acc_BsxD / (l_Bsx1 + eps)).astype(out_ref.dtype)
  lse_ref[...] = m_Bsx1 + jnp.log(l_Bsx1 + eps)


def dq_kernel(
  row_ptr_ref,
  cols_ref,
  q_ref,
  k_ref,
  v_ref,
  kmask_ref,
  do_ref,
  lse_ref,
  delta_ref,
  dq_ref,
  *,
  read_index: ReadIndex,
  block_size: int,
  scale: float,
  precision,
):
  """dQ of one query block: sum over its tiles of `dS @ K`, `dS = P * (dO V^T - delta)`."""
  bs = block_size
  g, r = pl.program_id(0), pl.program_id(1)
  start, stop = read_index(row_ptr_ref, g, r), read_index(row_ptr_ref, g, r + 1)
  q_BsxD, do_BsxD = q_ref[...], do_ref[...]
  lse_Bsx1, delta_Bsx1 = lse_ref[...], delta_ref[...]

  def body(t, dq_BsxD):
    c = read_index(cols_ref, g, t)
    k_BsxD = k_ref[pl.ds(pl.multiple_of(c * bs, bs), bs), :]
    v_BsxD = v_ref[pl.ds(pl.multiple_of(c * bs, bs), bs), :]
    valid_1xBs = kmask_ref[pl.ds(c, 1), :] > 0.5
    s_BsxBs = jnp.where(valid_1xBs, _dot_nt(q_BsxD, k_BsxD, precision) * scale, MASK_VALUE)
    p_BsxBs = jnp.exp(s_BsxBs - lse_Bsx1)
    dp_BsxBs = _dot_nt(do_BsxD, v_BsxD, precision)
    ds_BsxBs = p_BsxBs * (dp_BsxBs - delta_Bsx1)
    return dq_BsxD + _dot_nn(ds_BsxBs.astype(k_BsxD.dtype), k_BsxD, precision)

  dq_BsxD = jax.lax.fori_loop(start, stop, body, jnp.zeros(q_BsxD.shape, jnp.float32))
  dq_ref[...] = (dq_BsxD * scale).astype(dq_ref.dtype)


def dkv_kernel(
  col_ptr_ref,
  rows_ref,
  k_ref,
  v_ref,
  kmask_ref,
  q_ref,
  do_ref,
  lse_ref,
  delta_ref,
  dk_ref,
  dv_ref,
  *,
  read_index: ReadIndex,
  block_size: int,
  scale: float,
  precision,
):
  """dK, dV of one key block from its column of tiles (no atomics: one writer per block)."""
  bs = block_size
  g, c = pl.program_id(0), pl.program_id(1)
  start, stop = read_index(col_ptr_ref, g, c), read_index(col_ptr_ref, g, c + 1)
  k_BsxD, v_BsxD = k_ref[...], v_ref[...]
  valid_Bsx1 = kmask_ref[...] > 0.5

  def body(t, carry):
    dk_BsxD, dv_BsxD = carry
    r = read_index(rows_ref, g, t)
    q_BsxD = q_ref[pl.ds(pl.multiple_of(r * bs, bs), bs), :]
    do_BsxD = do_ref[pl.ds(pl.multiple_of(r * bs, bs), bs), :]
    lse_1xBs = lse_ref[pl.ds(r, 1), :]
    delta_1xBs = delta_ref[pl.ds(r, 1), :]
    # Transposed tile: rows are this block's keys, columns the query block's queries.
    sT_BsxBs = jnp.where(valid_Bsx1, _dot_nt(k_BsxD, q_BsxD, precision) * scale, MASK_VALUE)
    pT_BsxBs = jnp.exp(sT_BsxBs - lse_1xBs)
    dv_BsxD = dv_BsxD + _dot_nn(pT_BsxBs.astype(do_BsxD.dtype), do_BsxD, precision)
    dpT_BsxBs = _dot_nt(v_BsxD, do_BsxD, precision)
    dsT_BsxBs = pT_BsxBs * (dpT_BsxBs - delta_1xBs)
    dk_BsxD = dk_BsxD + _dot_nn(dsT_BsxBs.astype(q_BsxD.dtype), q_BsxD, precision)
    return dk_BsxD, dv_BsxD

  zeros_BsxD = jnp.zeros(k_BsxD.shape, jnp.float32)
  dk_BsxD, dv_BsxD = jax.lax.fori_loop(start, stop, body, (zeros_BsxD, zeros_BsxD))
  dk_ref[...] = (dk_BsxD * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv_BsxD.astype(dv_ref.dtype)
