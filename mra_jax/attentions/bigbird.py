"""BigBird block-sparse attention (Zaheer et al., NeurIPS 2020), ITC layout.

The (padded) sequence is cut into N blocks of `block_size` tokens.
- Global blocks: the first and the last block attend to every key and every query
  attends to them (HF `BigBirdBlockSparseAttention`'s internal global tokens).
- Every other query block n attends to: the global blocks 0 and N-1, the window
  blocks n-1, n, n+1, and `num_random_blocks` random blocks drawn from the rest.
A block that would appear twice in a row (n-1 == 0 near the start) is counted once.
Key blocks are gathered, so memory is O(L * block_size * (5 + r)); no L x L matrix.

Random blocks: drawn per head by a counter-based hash of a fixed key, so for a given key
and length the pattern is fixed (the same in training and evaluation, reproducible
under jit). HF redraws them with numpy at every training call; a per-call pattern
is obtained here by passing a fresh `random_key` to `bigbird_attention`.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from mra_jax import checks
from mra_jax.attentions import hash_random, softmax, working_layout
from mra_jax.knobs import takes_knobs

_NUM_FIXED = 5  # global first, global last, window n-1, n, n+1.


def bigbird_block_pattern(
  num_blocks: int, num_heads: int, num_random_blocks: int, random_key: jax.Array
):
  """The key-block table of the non-global query blocks 1 .. N-2.

  Args:
    num_blocks: N, blocks in the (padded) sequence.
    num_heads: H; each head draws its own random blocks.
    num_random_blocks: r, random key blocks per query block (fewer when too few
      blocks are left; the missing slots are marked invalid).
    random_key: a jax.random key (typed or raw uint32); the draw is
      `hash_random.hash_uniform` of it (cheap to compile, identical on every backend).

  Returns:
    (idx_HxMxS int32, valid_HxMxS bool) with M = max(N - 2, 0), S = 5 + min(r, N):
    slot s of row m names the key block that query block m + 1 attends to; an
    invalid slot (a duplicate or an unfilled random draw) is ignored.
  """
  n, m_rows = num_blocks, max(num_blocks - 2, 0)
  rows_M = jnp.arange(1, m_rows + 1)
  fixed_Mx5 = jnp.stack(
    [jnp.zeros_like(rows_M), jnp.full_like(rows_M, n - 1), rows_M - 1, rows_M, rows_M + 1], axis=-1
  )
  idx = jnp.broadcast_to(fixed_Mx5[None], (num_heads, m_rows, _NUM_FIXED))
  ok = jnp.ones(idx.shape, bool)
  r = min(num_random_blocks, n)
  if r > 0:
    cols_N = jnp.arange(n)
    excluded_MxN = (
      (cols_N[None, :] == 0)
      | (cols_N[None, :] == n - 1)
      | (jnp.abs(cols_N[None, :] - rows_M[:, None]) <= 1)
    )
    scores = hash_random.hash_uniform(random_key, (num_heads, m_rows, n))
    scores = jnp.where(excluded_MxN[None], -1.0, scores)
    top_s, top_i = jax.lax.top_k(scores, r)
    idx = jnp.concatenate([idx, top_i.astype(idx.dtype)], axis=-1)
    ok = jnp.concatenate([ok, top_s >= 0], axis=-1)
  s = idx.shape[-1]
  earlier_SxS = jnp.tril(jnp.ones((s, s), bool), k=-1)
  dup = jnp.any((idx[..., :, None] == idx[..., None, :]) & earlier_SxS[None, None], -1)
  return idx.astype(jnp.int32), ok & ~dup


@dataclasses.dataclass(frozen=True)
class BigBirdKnobs:
  """BigBird's knobs (the MRA paper's LRA config "32-2").

  Attributes:
    block_size: tokens per block, >= 1; the (padded) sequence is cut into blocks of this
      many tokens (32 in the MRA paper's config).
    num_random_blocks: random key blocks per non-global query block, >= 0 (2 in the MRA
      paper's config); fewer when too few blocks are left.
  """

  block_size: int = 32
  num_random_blocks: int = 2

  def __post_init__(self):
    checks.check_int("block_size", self.block_size, minimum=1)
    checks.check_int("num_random_blocks", self.num_random_blocks, minimum=0)


@takes_knobs(BigBirdKnobs, param="knobs")
def bigbird_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  mask: jax.Array | None = None,
  *,
  random_key: jax.Array | None = None,
  knobs: BigBirdKnobs,
) -> jax.Array:
  """BigBird attention: global + window + random key blocks (see module docstring).

  Args:
    query: [B, L, H, D] float32 / bfloat16 / float16.
    key: [B, L, H, D], same shape as query.
    value: [B, L, H, Dv].
    mask: optional [B, L] bool or 0/1, True = real token.
    random_key: jax.random key for the random blocks (default: all-zero key data).
    knobs: `BigBirdKnobs` (or its fields as keywords: block_size, num_random_blocks); L is
      padded to a multiple of block_size internally.

  Returns:
    [B, L, H, Dv] in query's dtype; padded query positions are 0.

  Raises:
    ValueError: bad shapes or knobs.
  """
  if random_key is None:
    random_key = jnp.zeros((2,), jnp.uint32)
  q, k, v, m = working_layout.prepare(query, key, value, mask)
  b, h, _length, d = q.shape
  dv = v.shape[-1]
  bs = knobs.block_size
  qp, kp, vp = (working_layout.pad_axis(x, bs, axis=2) for x in (q, k, v))
  mp = working_layout.pad_axis(m, bs, axis=1)
  n = qp.shape[2] // bs
  blocks = lambda x: x.reshape(b, h, n, bs, x.shape[-1])
  qb, kb, vb = blocks(qp), blocks(kp), blocks(vp)
  mb_BxNxBs = mp.reshape(b, n, bs)
  scale = 1.0 / math.sqrt(d)

  # Global query blocks (first, last) see every key: a [2 * Bs, L] strip.
  g_rows = [0] if n == 1 else [0, n - 1]
  q_g = qb[:, :, jnp.array(g_rows)].reshape(b, h, len(g_rows) * bs, d)
  logits_g = jnp.einsum("bhgd,bhld->bhgl", q_g, kp) * scale
  p_g, _ = softmax.masked_softmax(logits_g, jnp.broadcast_to(mp[:, None, None, :], logits_g.shape))
  o_g = jnp.einsum("bhgl,bhld->bhgd", p_g, vp).reshape(b, h, len(g_rows), bs, dv)
  if n <= 2:
    return working_layout.finish(o_g.reshape(b, h, n * bs, dv), m, query.dtype)

  idx_HxMxS, ok_HxMxS = bigbird_block_pattern(n, h, knobs.num_random_blocks, random_key)
  heads = jnp.arange(h)[:, None, None]
  k_sel = kb[:, heads, idx_HxMxS]  # [B, H, M, S, Bs, D]
  v_sel = vb[:, heads, idx_HxMxS]
  key_ok = mb_BxNxBs[:, idx_HxMxS] & ok_HxMxS[None, :, :, :, None]  # [B, H, M, S, Bs]
  logits = jnp.einsum("bhmqd,bhmskd->bhmqsk", qb[:, :, 1 : n - 1], k_sel) * scale
  msz, ssz = idx_HxMxS.shape[1:]
  logits = logits.reshape(b, h, msz, bs, ssz * bs)
  valid = jnp.broadcast_to(key_ok.reshape(b, h, msz, 1, ssz * bs), logits.shape)
  p, _ = softmax.masked_softmax(logits, valid)
  o_mid = jnp.einsum("bhmqk,bhmkd->bhmqd", p, v_sel.reshape(b, h, msz, ssz * bs, dv))
  o = jnp.concatenate([o_g[:, :, :1], o_mid, o_g[:, :, 1:]], axis=2)
  return working_layout.finish(o.reshape(b, h, n * bs, dv), m, query.dtype)


class BigBirdAttention(nnx.Module):
  """Registry module for BigBird; owns the fixed key of its random blocks.

  Defaults are the MRA paper's LRA config "32-2": block 32, 2 random blocks.
  """

  Knobs = BigBirdKnobs

  def __init__(
    self, knobs: BigBirdKnobs, *, num_heads: int, head_dim: int, max_length: int, rngs: nnx.Rngs
  ):
    del num_heads, head_dim, max_length  # The pattern is drawn for the runtime length.
    self.knobs = knobs
    self.random_key = hash_random.FixedRandom(jax.random.key_data(rngs.params()))

  def __call__(self, query, key, value, mask=None) -> jax.Array:
    return bigbird_attention(
      query, key, value, mask, random_key=self.random_key[...], knobs=self.knobs
    )
