"""Reformer LSH attention (Kitaev et al., ICLR 2020).

Per hash round: angular LSH (random rotation R, bucket = argmax([xR, -xR])) puts
each position in a bucket; positions are sorted by (bucket, position) and cut into
chunks of `chunk_length`; each query chunk attends to its own and the previous
key chunk (HF `lsh_num_chunks_before=1, after=0`). Rounds are combined with weights
softmax(logsumexp of each round), as in the paper; a key found in several rounds
counts once per round (HF does not de-duplicate either). Cost O(L * rounds *
chunk) after an O(L log L) sort; no L x L matrix.

Shared QK and separate q/k inputs:
- `shared_qk=True` (default, what Reformer and the MRA paper's harness do): the keys
  are the queries normalised to unit length, the `key` argument is not read, the
  logits are q_i . q_j / |q_j| (no 1/sqrt(D); Reformer's length-normalised keys),
  and a query does not attend to its own position (logit -1e5, as HF) unless nothing
  else is in reach.
- `shared_qk=False`: queries are hashed on q and keys on k with the same rotations
  and sorted separately; chunk n of the sorted queries meets chunks n and n-1 of the
  sorted keys; logits q . k / sqrt(D); no self-position rule. Where q = k this is the
  shared bucketing without the normalisation.
`attend_across_buckets=False` additionally masks pairs whose buckets differ (the
paper's "attend within a bucket"); the default True attends to the whole chunk
window as HF does.

Rotations are Gaussian numbers hashed from a fixed key (the module's; see
`hash_random.hash_normal`: jax.random would cost seconds of compile time), per head and
round, for the runtime number of buckets: fixed for a given length (HF redraws each
call unless `hash_seed` is set; pass a fresh `random_key` to redraw).
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

_SELF_LOGIT = -1e5  # HF's self-attention mask value for float32.


def default_num_buckets(padded_length: int, chunk_length: int) -> int:
  """HF's rule: the power of two nearest below 2 * L / chunk_length, at least 2."""
  target = max(2 * padded_length // chunk_length, 2)
  return 1 << (target.bit_length() - 1)


def bucket_factors(num_buckets: int, padded_length: int, chunk_length: int) -> tuple[int, ...]:
  """HF's factorisation: a large power-of-two bucket count becomes two hashes.

  Past 2 * max(sqrt(L / chunk), chunk) buckets, HF hashes with n1 and n2 = nb / n1
  buckets (bucket = b1 + n1 * b2), so the projections cost O(L * sqrt(nb)) rather than
  O(L * nb): at L = 16384 and chunk 64 that is 2 x 16 instead of 256 columns per round.
  """
  limit = 2 * max(int(math.sqrt(padded_length // chunk_length)), chunk_length)
  if num_buckets > limit and num_buckets >= 4 and not num_buckets & (num_buckets - 1):
    p = num_buckets.bit_length() - 1
    return (1 << (p // 2), 1 << (p - p // 2))
  return (num_buckets,)


def lsh_buckets(
  x_BxHxLxD: jax.Array,
  rotations_HxDxRxK: jax.Array,
  mask_BxL: jax.Array,
  num_buckets: int | tuple[int, ...],
) -> jax.Array:
  """Angular LSH buckets: argmax over [x R, -x R] per round (per factor).

  Args:
    x_BxHxLxD: vectors to hash (float).
    rotations_HxDxRxK: random rotations, K = sum(n // 2 for n in factors) (ignored
      when num_buckets == 1).
    mask_BxL: True = real token; padded positions get bucket prod(factors) so they
      sort after every real token.
    num_buckets: 1 or an even number, or a tuple of even factors (`bucket_factors`).

  Returns:
    buckets_BxHxRxL int32 in [0, prod(factors)].
  """
  factors = tuple(num_buckets) if isinstance(num_buckets, tuple) else (num_buckets,)
  b, h, length, _ = x_BxHxLxD.shape
  rounds = rotations_HxDxRxK.shape[2]
  if factors == (1,):
    buckets = jnp.zeros((b, h, rounds, length), jnp.int32)
  else:
    rot = jnp.einsum("bhld,hdrk->bhrlk", x_BxHxLxD, rotations_HxDxRxK)
    buckets, offset, stride = 0, 0, 1
    for n in factors:
      r = rot[..., offset : offset + n // 2]
      digit = jnp.argmax(jnp.concatenate([r, -r], axis=-1), axis=-1).astype(jnp.int32)
      buckets, offset, stride = buckets + stride * digit, offset + n // 2, stride * n
  return jnp.where(mask_BxL[:, None, None, :], buckets, math.prod(factors))


def sort_by_bucket(buckets_BxHxRxL: jax.Array) -> jax.Array:
  """Permutation sorting positions by (bucket, position): perm_BxHxRxL int32."""
  length = buckets_BxHxRxL.shape[-1]
  pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), buckets_BxHxRxL.shape)
  order_key = buckets_BxHxRxL * length + pos
  return jnp.argsort(order_key, axis=-1).astype(jnp.int32)


def _with_previous_chunk(x, num_chunks, axis):
  """[..., Nc, C, ...] -> [..., Nc, 2C, ...]: each chunk followed by its predecessor
  (chunk 0 wraps to the last, as Reformer); a single chunk is not doubled."""
  if num_chunks == 1:
    return x
  return jnp.concatenate([x, jnp.roll(x, 1, axis=axis)], axis=axis + 1)


@dataclasses.dataclass(frozen=True)
class ReformerKnobs:
  """Reformer's knobs (the MRA paper's LRA config `reformer/2`: HF's defaults, 2 hashes).

  Attributes:
    num_hashes: hash rounds, >= 1 (2 in the MRA paper's config).
    chunk_length: tokens per chunk of the sorted sequence, >= 1 (HF's
      `lsh_attn_chunk_length`, 64 by default as in the MRA paper's config); clipped to L,
      and L is padded internally to a multiple of it.
    num_buckets: hash buckets per round, 1 or an even int; None (the MRA paper's config)
      = HF's automatic rule, `default_num_buckets` of the padded length. A large power of
      two is hashed as two factors (`bucket_factors`, as HF).
    shared_qk: Reformer's shared query/key (True, as Reformer and the MRA paper's harness):
      the keys are the unit-norm queries and the `key` argument is not read; False hashes
      q and k separately (see the module docstring).
    attend_across_buckets: True (HF, the MRA paper's config) attends to the whole chunk
      window; False masks pairs in different buckets (the paper's "attend within a
      bucket").
  """

  num_hashes: int = 2
  chunk_length: int = 64
  num_buckets: int | None = None
  shared_qk: bool = True
  attend_across_buckets: bool = True

  def __post_init__(self):
    checks.check_int("num_hashes", self.num_hashes, minimum=1)
    checks.check_int("chunk_length", self.chunk_length, minimum=1)
    if self.num_buckets is not None:
      checks.check_int("num_buckets", self.num_buckets, minimum=1)
      if self.num_buckets > 1 and self.num_buckets % 2:
        raise ValueError(f"num_buckets must be 1 or even; got num_buckets={self.num_buckets}")


@takes_knobs(ReformerKnobs, param="knobs")
def reformer_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  mask: jax.Array | None = None,
  *,
  random_key: jax.Array | None = None,
  knobs: ReformerKnobs,
) -> jax.Array:
  """LSH attention; see the module docstring for the exact rules.

  Args:
    query: [B, L, H, D] float32 / bfloat16 / float16.
    key: [B, L, H, D], same shape as query (not read when shared_qk).
    value: [B, L, H, Dv].
    mask: optional [B, L] bool or 0/1, True = real token.
    random_key: jax.random key of the rotations (default: all-zero key data).
    knobs: `ReformerKnobs` (or its fields as keywords: num_hashes, chunk_length,
      num_buckets, shared_qk, attend_across_buckets).

  Returns:
    [B, L, H, Dv] in query's dtype; padded query positions are 0.

  Raises:
    ValueError: bad shapes or knobs.
  """
  num_hashes, num_buckets, shared_qk = knobs.num_hashes, knobs.num_buckets, knobs.shared_qk
  if random_key is None:
    random_key = jnp.zeros((2,), jnp.uint32)
  q, k, v, m_BxL = working_layout.prepare(query, key, value, mask)
  b, h, length, d = q.shape
  dv = v.shape[-1]
  c = min(knobs.chunk_length, length)
  q, k, v = (working_layout.pad_axis(x, c, axis=2) for x in (q, k, v))
  m = working_layout.pad_axis(m_BxL, c, axis=1)
  lp = q.shape[2]
  nc = lp // c
  nb = default_num_buckets(lp, c) if num_buckets is None else num_buckets
  factors = bucket_factors(nb, lp, c)
  rotations = hash_random.hash_normal(
    random_key, (h, d, num_hashes, max(sum(n // 2 for n in factors), 1))
  )

  if shared_qk:
    # Safe at q = 0 (padding): sqrt's gradient there would be inf * 0 = NaN.
    sq = jnp.sum(jnp.square(q), axis=-1, keepdims=True)
    k = jnp.where(sq > 0, q * jax.lax.rsqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
    scale = 1.0
  else:
    scale = 1.0 / math.sqrt(d)
  bucket_q = lsh_buckets(q, rotations, m, factors)
  bucket_k = bucket_q if shared_qk else lsh_buckets(k, rotations, m, factors)
  perm_q = sort_by_bucket(bucket_q)
  perm_k = perm_q if shared_qk else sort_by_bucket(bucket_k)

  def gather(x_BxHxLxF, perm):  # -> [B, H, R, Nc, C, F] in sorted order.
    x = jnp.take_along_axis(x_BxHxLxF[:, :, None], perm[..., None], axis=3)
    return x.reshape(b, h, num_hashes, nc, c, x.shape[-1])

  pos = jnp.broadcast_to(jnp.arange(lp)[None, None, :, None], (b, h, lp, 1))
  ok = jnp.broadcast_to(m[:, None, :, None], (b, h, lp, 1))
  q_s, qpos = gather(q, perm_q), gather(pos, perm_q)[..., 0]
  qbuck = jnp.take_along_axis(bucket_q, perm_q, axis=-1).reshape(b, h, num_hashes, nc, c)
  k_s, v_s = (_with_previous_chunk(gather(x, perm_k), nc, axis=3) for x in (k, v))
  kpos, kok = (_with_previous_chunk(gather(x, perm_k)[..., 0], nc, axis=3) for x in (pos, ok))
  kbuck = _with_previous_chunk(
    jnp.take_along_axis(bucket_k, perm_k, axis=-1).reshape(b, h, num_hashes, nc, c), nc, axis=3
  )

  logits = jnp.einsum("bhrnqd,bhrnkd->bhrnqk", q_s, k_s) * scale
  valid = jnp.broadcast_to(kok[..., None, :], logits.shape)
  if shared_qk:
    logits = jnp.where(qpos[..., :, None] == kpos[..., None, :], _SELF_LOGIT, logits)
  if not knobs.attend_across_buckets:
    valid = valid & (qbuck[..., :, None] == kbuck[..., None, :])
  p, lse = softmax.masked_softmax(logits, valid)
  o_s = jnp.einsum("bhrnqk,bhrnkd->bhrnqd", p, v_s).reshape(b, h, num_hashes, lp, dv)
  lse = lse.reshape(b, h, num_hashes, lp)

  # Undo the sort, then weight each round by its share of the total softmax mass.
  inverse = jnp.argsort(perm_q, axis=-1)
  o_r = jnp.take_along_axis(o_s, inverse[..., None], axis=3)
  lse = jnp.take_along_axis(lse, inverse, axis=-1)
  w_r, _ = softmax.masked_softmax(lse, jnp.isfinite(lse), axis=2)
  o = jnp.sum(o_r * w_r[..., None], axis=2)
  return working_layout.finish(o, m_BxL, query.dtype)


class ReformerAttention(nnx.Module):
  """Registry module for `reformer_attention`; owns the fixed key of its rotations.

  Defaults: the MRA paper's LRA config (HF LSHSelfAttention, num_hashes=2, other
  settings HF defaults: chunk 64, automatic bucket count, shared QK).
  """

  Knobs = ReformerKnobs

  def __init__(
    self, knobs: ReformerKnobs, *, num_heads: int, head_dim: int, max_length: int, rngs: nnx.Rngs
  ):
    del num_heads, head_dim, max_length  # Rotations are drawn for the runtime length.
    self.knobs = knobs
    self.random_key = hash_random.FixedRandom(jax.random.key_data(rngs.params()))

  def __call__(self, query, key, value, mask=None) -> jax.Array:
    return reformer_attention(
      query, key, value, mask, random_key=self.random_key[...], knobs=self.knobs
    )
