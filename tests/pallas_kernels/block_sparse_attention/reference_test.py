"""The one-shot reference against a dense statement of the same maths, and numerically."""
# pylint: disable=invalid-name

import jax
import jax.numpy as jnp
from jax import test_util as jtu

from pallas_kernels.block_sparse_attention import base
from tests.pallas_kernels.block_sparse_attention import contract


def dense_block_sparse_attention(
  q,
  k,
  v,
  tile_ids,
  key_valid,
  m0,
  l0,
  acc0,
  *,
  block_size,
  scale=None,
  eps=base.DEFAULT_EPS,
  causal=False,
):
  """The contract on full `(Lq, Lk)` score matrices: no gathers, no segment sums.

  Grouped-query attention as query head h reading kv head h // (H // Hk) by einsum over a
  group axis; causality as the position mask `j <= i`.
  """
  B, H, Lq, D = q.shape
  Hk, Lk = k.shape[1], k.shape[2]
  Nq, Nk = Lq // block_size, Lk // block_size
  scale = D**-0.5 if scale is None else scale
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  q, k, v, m0, l0, acc0 = map(f32, (q, k, v, m0, l0, acc0))
  selected_BxHkxT = jnp.zeros((B, Hk, Nq * Nk), bool)
  selected_BxHkxT = jax.vmap(jax.vmap(lambda s, ids: s.at[ids].set(True)))(
    selected_BxHkxT, tile_ids
  )
  selected = selected_BxHkxT.reshape(B, Hk, 1, Nq, Nk)
  selected = jnp.repeat(jnp.repeat(selected, block_size, axis=3), block_size, axis=4)
  keep = selected & key_valid[:, None, None, None, :].astype(bool)
  if causal:
    keep = keep & (jnp.arange(Lk)[None, :] <= jnp.arange(Lq)[:, None])[None, None, None]
  # (B, Hk, group, ...): query head h = g * group + i.
  grouped = lambda x: x.reshape(B, Hk, H // Hk, *x.shape[2:])
  q, m0, l0, acc0 = map(grouped, (q, m0, l0, acc0))
  s = jnp.where(keep, jnp.einsum("bhiqd,bhkd->bhiqk", q, k) * scale, -jnp.inf)
  m = jnp.maximum(m0, jnp.max(s, axis=-1))
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  p = jnp.exp(s - m[..., None])
  init = jnp.exp(m0 - m)
  l = l0 * init + jnp.sum(p, axis=-1)
  acc = acc0 * init[..., None] + jnp.einsum("bhiqk,bhkd->bhiqd", p, v)
  ungrouped = lambda x: x.reshape(B, H, *x.shape[3:])
  return ungrouped(acc / (l + eps)[..., None]), ungrouped(m + jnp.log(l + eps))


class TestReference(contract.BlockSparseAttentionContract):
  IMPLEMENTATION = base.Reference()

  def expected(self, *args, **options):
    return dense_block_sparse_attention(*args, **options)


def test_reference_gradients_numerically():
  case = contract.Case(H=1, Lq=64, Lk=64, D=8, pad=(10,))
  args, _ = contract.inputs(case)
  q, k, v, ids, valid, m0, l0, acc0 = args
  f = lambda q, k, v, l0, acc0: base.block_sparse_attention_reference(
    q, k, v, ids, valid, m0, l0, acc0, block_size=32
  )
  # The reference computes in float32 (as it did when this ran on float64 inputs).
  jtu.check_grads(jax.jit(f), (q, k, v, l0, acc0), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)
