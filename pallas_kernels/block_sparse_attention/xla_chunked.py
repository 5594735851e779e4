"""Block-sparse attention as chunked, flash-style, pure `jnp`: the implementation for CPUs.

Computes exactly `base.block_sparse_attention_reference` (same contract, tested against
it), but organised for CPUs and for long sequences:

- one (batch, head) at a time (`lax.map`), and within a head the sorted tile list in
  chunks of about `chunk_bytes` (2 MiB) of gathered keys, so every intermediate stays in cache and no
  buffer grows with L (large fresh buffers cost page faults on every call: at
  L=16384 this alone made a one-shot version 6x slower than at L=4096);
- two passes over the chunks in the forward (the exact per-query maximum, then the
  sums), so the result equals the one-shot reference to float32 round-off;
- a hand-written VJP that saves only `out` and the log-sum-exp and recomputes the
  tiles chunk by chunk (FlashAttention's backward), so memory is O(L D) per head.

The backward is also an executable statement of the algebra the Pallas kernels'
backward implements: with P = exp(s - lse) and delta = rowsum(dO * out),
dS = P (dO v^T - delta), dq = scale dS k, dk = scale dS^T q, dv = P^T dO,
dacc0 = dO exp(m0 - lse), dl0 = -delta exp(m0 - lse).
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels.block_sparse_attention import base


def _chunk_plan(tile_ids_K, num_key_blocks, block_size, head_dim, batch, chunk_bytes):
  """Splits the sorted tile list into equal chunks; padding tiles are flagged off.

  A chunk holds about `chunk_bytes` of gathered keys across the `batch` heads that
  are processed together.
  """
  K = tile_ids_K.shape[0]
  T = max(1, min(K, chunk_bytes // (batch * block_size * head_dim * 4)))
  C = -(-K // T)
  pad = C * T - K
  ids = jnp.concatenate([tile_ids_K, jnp.broadcast_to(tile_ids_K[-1:], (pad,))])
  live = jnp.arange(C * T) < K
  return (
    (ids // num_key_blocks).reshape(C, T),
    (ids % num_key_blocks).reshape(C, T),
    live.reshape(C, T),
  )


def _chunk_scores(q_NqxBsxD, k_NkxBsxD, valid_NkxBs, rows_T, cols_T, live_T, scale):
  """Scores of one chunk of tiles, -inf where the key is padding or the tile is filler."""
  s = jnp.einsum("tid,tjd->tij", q_NqxBsxD[rows_T], k_NkxBsxD[cols_T]) * scale
  keep = valid_NkxBs[cols_T] & live_T[:, None]
  return jnp.where(keep[:, None, :], s, -jnp.inf)


def _one_head_forward(
  q, k, v, ids, valid, m0, l0, acc0, *, block_size, scale, eps, batch, chunk_bytes
):
  Lq, D = q.shape
  Lk = k.shape[0]
  bs = block_size
  Nq, Nk = Lq // bs, Lk // bs
  qb, kb, vb = q.reshape(Nq, bs, D), k.reshape(Nk, bs, D), v.reshape(Nk, bs, D)
  validb = valid.reshape(Nk, bs)
  rows, cols, live = _chunk_plan(ids, Nk, bs, D, batch, chunk_bytes)

  def max_step(m_NqxBs, chunk):
    r, c, ok = chunk
    s = _chunk_scores(qb, kb, validb, r, c, ok, scale)
    return m_NqxBs.at[r].max(jnp.max(s, axis=-1), indices_are_sorted=True), None

  m, _ = jax.lax.scan(max_step, m0.reshape(Nq, bs), (rows, cols, live))
  m = jnp.where(jnp.isfinite(m), m, 0.0)

  def sum_step(carry, chunk):
    l, acc = carry
    r, c, ok = chunk
    p = jnp.exp(_chunk_scores(qb, kb, validb, r, c, ok, scale) - m[r][:, :, None])
    l = l.at[r].add(jnp.sum(p, axis=-1), indices_are_sorted=True)
    acc = acc.at[r].add(jnp.einsum("tij,tjd->tid", p, vb[c]), indices_are_sorted=True)
    return (l, acc), None

  # Zeros made from the inputs carry their sharding (explicit-sharding meshes need it).
  zeros = (jnp.zeros_like(m0).reshape(Nq, bs), jnp.zeros_like(qb))
  (l, acc), _ = jax.lax.scan(sum_step, zeros, (rows, cols, live))
  m = m.reshape(Lq)
  init_scale = jnp.exp(m0 - m)
  l = l0 * init_scale + l.reshape(Lq)
  acc = acc0 * init_scale[:, None] + acc.reshape(Lq, D)
  out = acc / (l + eps)[:, None]
  return out, m + jnp.log(l + eps)


def _one_head_backward(
  q, k, v, ids, valid, m0, out, lse, d_out, d_lse, *, block_size, scale, batch, chunk_bytes
):
  Lq, D = q.shape
  Lk = k.shape[0]
  bs = block_size
  Nq, Nk = Lq // bs, Lk // bs
  qb, kb, vb = q.reshape(Nq, bs, D), k.reshape(Nk, bs, D), v.reshape(Nk, bs, D)
  dob = d_out.reshape(Nq, bs, D)
  validb = valid.reshape(Nk, bs)
  lseb = lse.reshape(Nq, bs)
  # d lse / d s_j = P_j, so a cotangent on lse enters exactly like -delta.
  delta = jnp.sum(d_out * out, axis=-1) - d_lse
  deltab = delta.reshape(Nq, bs)
  rows, cols, live = _chunk_plan(ids, Nk, bs, D, batch, chunk_bytes)

  def step(carry, chunk):
    dq, dk, dv = carry
    r, c, ok = chunk
    p = jnp.exp(_chunk_scores(qb, kb, validb, r, c, ok, scale) - lseb[r][:, :, None])
    do = dob[r]
    dp = jnp.einsum("tid,tjd->tij", do, vb[c])
    ds = p * (dp - deltab[r][:, :, None]) * scale
    dq = dq.at[r].add(jnp.einsum("tij,tjd->tid", ds, kb[c]), indices_are_sorted=True)
    dk = dk.at[c].add(jnp.einsum("tij,tid->tjd", ds, qb[r]))
    dv = dv.at[c].add(jnp.einsum("tij,tid->tjd", p, do))
    return (dq, dk, dv), None

  zeros = (jnp.zeros_like(qb), jnp.zeros_like(kb), jnp.zeros_like(vb))
  (dq, dk, dv), _ = jax.lax.scan(step, zeros, (rows, cols, live))
  init_weight = jnp.exp(m0 - lse)
  return (
    dq.reshape(Lq, D),
    dk.reshape(Lk, D),
    dv.reshape(Lk, D),
    -delta * init_weight,
    d_out * init_weight[:, None],
  )


def _over_heads(one_head, valid, *operands):
  """Runs `one_head` for every (batch, head): heads in sequence, a batch at once.

  Heads go through `lax.map` so one head's tiles are freed before the next; the batch
  axis is vmapped, so a batch-sharded input stays sharded (a sequential loop over a
  sharded axis is not allowed).
  """
  heads_first = [jnp.swapaxes(x, 0, 1) for x in operands]
  per_batch = jax.vmap(lambda ops, valid: one_head(*ops[:3], ops[3], valid, *ops[4:]))
  out = jax.lax.map(lambda ops: per_batch(ops, valid), heads_first)
  return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), out)


@dataclasses.dataclass(frozen=True, kw_only=True)
class XlaChunked(base.Implementation):
  """Block-sparse attention from an initial softmax state, chunked (see the module doc).

  Any positive block size. The inputs are computed in float32 and the gradients come back
  in their own dtypes.

  Attributes:
    chunk_bytes: gathered keys per chunk of tiles (float32 bytes across the heads processed
      together); about 2 MiB keeps a chunk's intermediates in a CPU's cache.
  """

  NAME: ClassVar[str] = "xla_chunked"
  chunk_bytes: int = 2 * 2**20

  def __post_init__(self):
    base.check_int_option("chunk_bytes", self.chunk_bytes, minimum=1)

  def __call__(
    self,
    q_BxHxLqxD,
    k_BxHxLkxD,
    v_BxHxLkxD,
    tile_ids_BxHxK,
    key_valid_BxLk,
    m0_BxHxLq,
    l0_BxHxLq,
    acc0_BxHxLqxD,
    *,
    block_size: int,
    scale: float,
    eps: float,
  ) -> tuple[jax.Array, jax.Array]:
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return _chunked_attention(
      f32(q_BxHxLqxD),
      f32(k_BxHxLkxD),
      f32(v_BxHxLkxD),
      tile_ids_BxHxK.astype(jnp.int32),
      key_valid_BxLk.astype(bool),
      jax.lax.stop_gradient(f32(m0_BxHxLq)),
      f32(l0_BxHxLq),
      f32(acc0_BxHxLqxD),
      _Static(block_size, float(scale), float(eps), self.chunk_bytes),
    )


class _Static(NamedTuple):
  """The op's static settings (hashable: a `custom_vjp` non-differentiable argument)."""

  block_size: int
  scale: float
  eps: float
  chunk_bytes: int


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _chunked_attention(q, k, v, ids, valid, m0, l0, acc0, static):
  """The op on float32 arrays; m0 is a reference point and gets no gradient."""
  return _forward(q, k, v, ids, valid, m0, l0, acc0, static)[0]


def _forward(q, k, v, ids, valid, m0, l0, acc0, static):
  one = functools.partial(
    _one_head_forward,
    block_size=static.block_size,
    scale=static.scale,
    eps=static.eps,
    batch=q.shape[0],
    chunk_bytes=static.chunk_bytes,
  )
  out, lse = _over_heads(one, valid, q, k, v, ids, m0, l0, acc0)
  return (out, lse), (q, k, v, ids, valid, m0, out, lse)


def _backward(static, residuals, cotangents):
  q, k, v, ids, valid, m0, out, lse = residuals
  d_out, d_lse = cotangents
  one = functools.partial(
    _one_head_backward,
    block_size=static.block_size,
    scale=static.scale,
    batch=q.shape[0],
    chunk_bytes=static.chunk_bytes,
  )
  dq, dk, dv, dl0, dacc0 = _over_heads(one, valid, q, k, v, ids, m0, out, lse, d_out, d_lse)
  return dq, dk, dv, None, None, None, dl0, dacc0


_chunked_attention.defvjp(_forward, _backward)
