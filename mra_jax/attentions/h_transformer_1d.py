"""H-Transformer-1D attention (Zhu & Soricut, ACL 2021): a hierarchical matrix.

The sequence is padded to N = 2^k blocks of `block_size` tokens. The attention
matrix exp(q k^T / sqrt(D)) is partitioned along a binary tree of blocks:
- level 0 (full resolution): each block with itself and with its sibling block
  (blocks 2m and 2m+1), exactly;
- level l >= 1: tokens are coarsened 2^l : 1 (queries and keys averaged over their
  real tokens, values summed, token counts kept), the coarse sequence is cut into
  blocks of `block_size` coarse tokens, and each block attends to its sibling only.
Every pair of level-0 blocks (i, j), i != j, belongs to exactly one level: the
highest bit where i and j differ. So nothing is counted twice and nothing is
missed; a coarse cell stands for all its fine pairs with weight
count_j * exp(q~ k~ / sqrt(D)), and its value sum. All levels share one softmax
normaliser per query (max-subtracted in float32); coarse results are copied back
to the fine queries they stand for (piecewise-constant interpolation, as the
paper's H-matrix prolongation). Cost O(L * block_size) time and memory.

Exact limit: with L <= 2 * block_size only level 0 exists and the result is exact
softmax attention.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from mra_jax import checks
from mra_jax.attentions import working_layout
from mra_jax.knobs import takes_knobs


def _level_stats(logits, valid, weight, values):
  """Max, count-weighted exp-sum and value-sum read-out over the last key axis."""
  logits = jnp.where(valid, logits, -jnp.inf)
  m = jnp.max(logits, axis=-1, keepdims=True)
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  p = jnp.where(valid, jnp.exp(logits - m), 0.0)
  # A coarse key stands for `weight` tokens in the normaliser; `values` are already
  # sums over those tokens.
  s = jnp.sum(p * weight, axis=-1)
  num = jnp.einsum("...qk,...kd->...qd", p, values)
  has_any = jnp.any(valid, axis=-1)
  return jnp.where(has_any, m[..., 0], -jnp.inf), s, num


def _siblings(x_BxHxNxC, axis=2):
  """Swaps blocks 2m and 2m+1 along `axis` (N must be even)."""
  shape = x_BxHxNxC.shape
  n = shape[axis]
  x = x_BxHxNxC.reshape(shape[:axis] + (n // 2, 2) + shape[axis + 1 :])
  return jnp.flip(x, axis=axis + 1).reshape(shape)


@dataclasses.dataclass(frozen=True)
class HTransformer1DKnobs:
  """H-Transformer-1D's knobs (the MRA paper's LRA harness: lucidrains' HAttention1D).

  Attributes:
    block_size: tokens per level-0 block, >= 1 (16 in the MRA paper's LRA harness); L is
      padded internally to block_size * 2^k, and each coarser level has blocks of this many
      coarse tokens.
  """

  block_size: int = 16

  def __post_init__(self):
    checks.check_int("block_size", self.block_size, minimum=1)


@takes_knobs(HTransformer1DKnobs, param="knobs")
def h_transformer_1d_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  mask: jax.Array | None = None,
  *,
  knobs: HTransformer1DKnobs,
) -> jax.Array:
  """Hierarchical (H-matrix) attention of H-Transformer-1D; see module docstring.

  Args:
    query: [B, L, H, D] float32 / bfloat16 / float16.
    key: [B, L, H, D], same shape as query.
    value: [B, L, H, Dv].
    mask: optional [B, L] bool or 0/1, True = real token.
    knobs: `HTransformer1DKnobs` (or its field as a keyword: block_size).

  Returns:
    [B, L, H, Dv] in query's dtype; padded query positions are 0.

  Raises:
    ValueError: bad shapes or block_size.
  """
  q, k, v, m = working_layout.prepare(query, key, value, mask)
  b, h, length, d = q.shape
  dv = v.shape[-1]
  bs = knobs.block_size
  n0 = 1 << max(math.ceil(length / bs) - 1, 0).bit_length()
  lp = n0 * bs
  q, k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, lp - length), (0, 0))) for x in (q, k, v))
  cnt_BxL = jnp.pad(m, ((0, 0), (0, lp - length))).astype(jnp.float32)
  scale = 1.0 / math.sqrt(d)

  # Level 0: each block against itself and its sibling, at full resolution.
  blocks = lambda x: x.reshape(b, h, n0, bs, x.shape[-1])
  qb, kb, vb = blocks(q), blocks(k), blocks(v)
  cb = cnt_BxL.reshape(b, 1, n0, bs)
  if n0 > 1:
    kb, vb = (jnp.concatenate([x, _siblings(x)], axis=3) for x in (kb, vb))
    cb = jnp.concatenate([cb, _siblings(cb)], axis=3)
  logits = jnp.einsum("bhnqd,bhnkd->bhnqk", qb, kb) * scale
  w = cb[:, :, :, None, :]
  m0, s0, num0 = _level_stats(logits, jnp.broadcast_to(w > 0, logits.shape), w, vb)
  levels = [(m0.reshape(b, h, lp), s0.reshape(b, h, lp), num0.reshape(b, h, lp, dv))]

  # Levels 1..: coarsen by two each time, sibling blocks only.
  q_sum, k_sum, v_sum, cnt = q, k, v, cnt_BxL[:, None, :]
  n_l, factor = n0, 1
  while n_l > 2:
    pair = lambda x: x.reshape(x.shape[:2] + (x.shape[2] // 2, 2) + x.shape[3:]).sum(3)
    q_sum, k_sum, v_sum, cnt = pair(q_sum), pair(k_sum), pair(v_sum), pair(cnt)
    n_l, factor = n_l // 2, factor * 2
    denom = jnp.maximum(cnt, 1.0)[..., None]
    q_l, k_l = q_sum / denom, k_sum / denom
    split = lambda x: x.reshape(x.shape[:2] + (n_l, bs) + x.shape[3:])
    k_sib, v_sib, c_sib = (_siblings(split(x)) for x in (k_l, v_sum, cnt))
    logits = jnp.einsum("bhnqd,bhnkd->bhnqk", split(q_l), k_sib) * scale
    w = c_sib[:, :, :, None, :]
    m_l, s_l, num_l = _level_stats(logits, jnp.broadcast_to(w > 0, logits.shape), w, v_sib)
    up = lambda x: jnp.repeat(x.reshape(x.shape[:2] + (n_l * bs,) + x.shape[4:]), factor, axis=2)
    levels.append((up(m_l), up(s_l), up(num_l)))

  # One softmax over all levels: rescale each level to the common max.
  m_all = jnp.max(jnp.stack([lv[0] for lv in levels]), axis=0)
  m_all = jnp.where(jnp.isfinite(m_all), m_all, 0.0)
  s_tot = jnp.zeros_like(m_all)
  num_tot = jnp.zeros((b, h, lp, dv), jnp.float32)
  for m_l, s_l, num_l in levels:
    r = jnp.where(jnp.isfinite(m_l), jnp.exp(m_l - m_all), 0.0)
    s_tot = s_tot + s_l * r
    num_tot = num_tot + num_l * r[..., None]
  o = num_tot / jnp.where(s_tot > 0, s_tot, 1.0)[..., None]
  return working_layout.finish(o, m, query.dtype)


class HTransformer1DAttention(nnx.Module):
  """Registry module for `h_transformer_1d_attention` (parameter-free).

  Default block size 16 as the MRA paper's LRA harness (lucidrains' HAttention1D).
  """

  Knobs = HTransformer1DKnobs

  def __init__(
    self,
    knobs: HTransformer1DKnobs,
    *,
    num_heads: int,
    head_dim: int,
    max_length: int,
    rngs: nnx.Rngs,
  ):
    del num_heads, head_dim, max_length, rngs  # No parameters; any length works.
    self.knobs = knobs

  def __call__(self, query, key, value, mask=None) -> jax.Array:
    return h_transformer_1d_attention(query, key, value, mask, knobs=self.knobs)
