"""The block-sparse attention op's contract, its input check and its one-shot reference.

Block-sparse attention from an initial online-softmax state is the high-resolution core of
MRA. For every query i of query block r, with S(i) the keys of the key blocks c whose tile
(r, c) is selected, and (m0, l0, acc0) an initial online-softmax state (MRA-2 passes its
low-resolution term here, MRA-2-s passes an empty state, m0 = -inf):

    m_i   = max(m0_i, max_{j in S(i)} s_ij)                  s_ij = scale * q_i . k_j
    l_i   = l0_i   exp(m0_i - m_i) + sum_{j in S(i)} exp(s_ij - m_i)
    acc_i = acc0_i exp(m0_i - m_i) + sum_{j in S(i)} exp(s_ij - m_i) v_j
    out_i = acc_i / (l_i + eps)
    lse_i = m_i + log(l_i + eps)

* Tile ids are flat, t = r * Nk + c for query block r and key block c, integer, sorted
  ascending and unique within each (batch, kv head). Rows may hold any number of tiles,
  none included (MRA's selection is a global top-k over all Nq * Nk tiles).
* Keys with `key_valid=False` get no weight; heads share their batch element's key mask.
* Grouped-query attention: k and v may have fewer heads than q, Hk dividing Hq; query head
  h uses kv head h // (Hq // Hk), as `jax.nn.dot_product_attention` does. Tile ids are per
  kv head, `(B, Hk, K)`: a group's query heads share their kv head's selection (as NSA
  does), so the kernels load each selected K/V tile once for the whole group. m0, l0, acc0,
  out and lse are per query head; dK and dV sum over the group.
* `causal=True` (Lq == Lk): query r * bs + i attends key c * bs + j only if
  c * bs + j <= r * bs + i, on top of the tile selection. Callers pass tiles with c <= r
  (a lower-triangular pattern, the diagonal tile (r, r) included or not); the reference masks
  every position, so it is right for any pattern, and the kernels mask the tiles with c >= r,
  so that for a lower-triangular pattern only the diagonal tiles pay for the mask.
* `eps` is the published code's 1e-6 on the normaliser, taken on the scale of the running
  maximum m_i, as there. A query with no selected valid key and no initial state has
  m_i = 0, so out_i = 0 and lse_i = log(eps).
* The maximum carries no gradient (it cancels analytically); gradients flow to q, k, v,
  l0 and acc0. m0, tile ids and key_valid get none.
* Both outputs are float32 whatever q's dtype.

`block_sparse_attention_reference` states this contract in one shot of pure `jnp` (float32,
every selected tile gathered at once); every implementation is tested against it.

`Implementation` is what every peer is: a frozen dataclass whose fields are its own options
(checked once, when it is built), called on arrays that `check_inputs` has already passed
(`api.block_sparse_attention` checks them once, before any sharding or kernel).
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

DEFAULT_EPS = 1e-6
# Finite "minus infinity" for kernels: exp(MASK - anything finite) == 0 and MASK - MASK == 0,
# so masked scores never produce `inf - inf`.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

_FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def argument_shapes(
  *,
  batch: int,
  heads: int,
  length: int,
  head_dim: int,
  num_tiles: int,
  dtype,
  kv_heads: int | None = None,
  sharding: jax.sharding.Sharding | None = None,
) -> tuple[jax.ShapeDtypeStruct, ...]:
  """The op's eight arguments as `ShapeDtypeStruct`s, for lowering and compiling ahead of time.

  Queries and keys share `length`; q, k, v are `dtype`, the tile ids int32, the key mask bool
  and the initial state float32. `kv_heads` (default `heads`) is k's, v's and the tile ids'
  head count. `sharding` places every one (e.g. on a compile-only device).
  """
  B, H, L, D, K = batch, heads, length, head_dim, num_tiles
  Hk = heads if kv_heads is None else kv_heads
  sds = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sharding)
  return (
    sds((B, H, L, D), dtype),
    sds((B, Hk, L, D), dtype),
    sds((B, Hk, L, D), dtype),
    sds((B, Hk, K), jnp.int32),
    sds((B, L), jnp.bool_),
    sds((B, H, L), jnp.float32),
    sds((B, H, L), jnp.float32),
    sds((B, H, L, D), jnp.float32),
  )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Implementation:
  """One peer implementation of the op: a frozen dataclass whose fields are its options.

  A subclass checks its fields once, in `__post_init__`, and implements `__call__` on arrays
  that `check_inputs` has passed. Class data says what it takes:

  Attributes:
    NAME: its key in `api.IMPLEMENTATIONS`, for messages.
    BLOCK_SIZES: the block sizes it takes; None: any positive size dividing the lengths.
    TAKES_PRECISION: whether it has a `precision` field (a float32 dot precision name).
    ON_AUTO_AXES: how `sharding.run_per_shard` runs it on a mesh with Auto axes: "xla"
      (plain XLA ops: XLA's partitioner splits them), "custom_partitioning" (kernels XLA
      cannot see into: one call per shard, split as XLA's partitioner says) or "shard_map"
      (kernels that `custom_partitioning` cannot reach, as Mosaic TPU's: a `shard_map` with
      data-parallel specs assumed).
  """

  NAME: ClassVar[str] = ""
  BLOCK_SIZES: ClassVar[tuple[int, ...] | None] = None
  TAKES_PRECISION: ClassVar[bool] = False
  ON_AUTO_AXES: ClassVar[str] = "xla"

  def __call__(
    self,
    q_BxHxLqxD: jax.Array,
    k_BxHkxLkxD: jax.Array,
    v_BxHkxLkxD: jax.Array,
    tile_ids_BxHkxK: jax.Array,
    key_valid_BxLk: jax.Array,
    m0_BxHxLq: jax.Array,
    l0_BxHxLq: jax.Array,
    acc0_BxHxLqxD: jax.Array,
    *,
    block_size: int,
    scale: float,
    eps: float,
    causal: bool,
  ) -> tuple[jax.Array, jax.Array]:
    """`(out_BxHxLqxD, lse_BxHxLq)`, float32, on arrays `check_inputs` has passed.

    Differentiable in q, k, v, l0 and acc0. `scale` is resolved (a float), `block_size` one
    of `BLOCK_SIZES`, Lq == Lk where `causal`. Call it through `api.block_sparse_attention`,
    which checks the arrays.
    """
    raise NotImplementedError


def check_int_option(name: str, value, *, minimum: int) -> None:
  """Raises ValueError naming `name` unless `value` is an int (not a bool) >= `minimum`."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")


def check_inputs(
  q_BxHxLqxD,
  k_BxHkxLkxD,
  v_BxHkxLkxD,
  tile_ids_BxHkxK,
  key_valid_BxLk,
  m0_BxHxLq,
  l0_BxHxLq,
  acc0_BxHxLqxD,
  *,
  block_size: int,
  implementation: Implementation,
  causal: bool = False,
) -> None:
  """Raises ValueError naming the first bad argument; runs before any kernel is built.

  Args:
    q_BxHxLqxD ... acc0_BxHxLqxD: the op's arrays (see the module doc).
    block_size: tile side; the lengths must be multiples of it.
    implementation: the implementation that will run (its block sizes and name).
    causal: whether the op is causal (then Lq == Lk).
  """
  q, k, v = q_BxHxLqxD, k_BxHkxLkxD, v_BxHkxLkxD
  if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
    raise ValueError(f"block_size must be a positive integer, got {block_size=}")
  block_sizes, name = implementation.BLOCK_SIZES, implementation.NAME
  if block_sizes is not None and block_size not in block_sizes:
    raise ValueError(
      f"block_size must be one of {block_sizes} for implementation={name!r}, got {block_size=}"
    )
  if not isinstance(causal, bool):
    raise ValueError(f"causal must be a bool, got {causal=}")
  if q.ndim != 4:
    raise ValueError(f"q_BxHxLqxD must be rank 4, got {q.shape=}")
  B, H, Lq, D = q.shape
  if k.ndim != 4 or k.shape[0] != B or k.shape[3] != D:
    raise ValueError(f"k_BxHkxLkxD must be (B, Hk, Lk, D) = ({B}, Hk, Lk, {D}), got {k.shape=}")
  Hk, Lk = k.shape[1], k.shape[2]
  if Hk == 0 or H % Hk:
    raise ValueError(
      f"k_BxHkxLkxD's heads must divide q_BxHxLqxD's (grouped-query attention), got "
      f"Hk={Hk} (k), H={H} (q)"
    )
  if v.shape != k.shape:
    raise ValueError(f"v_BxHkxLkxD must have k's shape {k.shape}, got {v.shape=}")
  for name, x in (("q_BxHxLqxD", q), ("k_BxHkxLkxD", k), ("v_BxHkxLkxD", v)):
    if not any(x.dtype == d for d in _FLOAT_DTYPES):
      raise ValueError(f"{name} must be float32, bfloat16 or float16, got {x.dtype=}")
  if not (q.dtype == k.dtype == v.dtype):
    raise ValueError(
      f"q_BxHxLqxD, k_BxHkxLkxD, v_BxHkxLkxD must share a dtype, got "
      f"{q.dtype=}, {k.dtype=}, {v.dtype=}"
    )
  if Lq % block_size or Lk % block_size:
    raise ValueError(
      f"sequence lengths must be multiples of {block_size=}, got {Lq=} (q), {Lk=} (k)"
    )
  if causal and Lq != Lk:
    raise ValueError(f"causal=True needs equal query and key lengths, got {Lq=} (q), {Lk=} (k)")
  Nq, Nk = Lq // block_size, Lk // block_size
  ids = tile_ids_BxHkxK
  if ids.ndim != 3 or ids.shape[:2] != (B, Hk) or not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(
      f"tile_ids_BxHkxK must be integer (B, Hk, K) = ({B}, {Hk}, K), one tile list per kv "
      f"head, got {ids.shape=}, {ids.dtype=}"
    )
  if ids.shape[2] > Nq * Nk:
    raise ValueError(f"tile_ids_BxHkxK holds more than Nq * Nk = {Nq * Nk} tiles: {ids.shape=}")
  if key_valid_BxLk.shape != (B, Lk):
    raise ValueError(f"key_valid_BxLk must be ({B}, {Lk}), got {key_valid_BxLk.shape=}")
  if m0_BxHxLq.shape != (B, H, Lq):
    raise ValueError(f"m0_BxHxLq must be ({B}, {H}, {Lq}), got {m0_BxHxLq.shape=}")
  if l0_BxHxLq.shape != (B, H, Lq):
    raise ValueError(f"l0_BxHxLq must be ({B}, {H}, {Lq}), got {l0_BxHxLq.shape=}")
  if acc0_BxHxLqxD.shape != (B, H, Lq, D):
    raise ValueError(f"acc0_BxHxLqxD must be ({B}, {H}, {Lq}, {D}), got {acc0_BxHxLqxD.shape=}")


def _one_head_reference(
  q_LqxD,
  k_LkxD,
  v_LkxD,
  tile_ids_K,
  key_valid_Lk,
  m0_Lq,
  l0_Lq,
  acc0_LqxD,
  *,
  block_size: int,
  scale: float,
  eps: float,
  causal: bool,
):
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
  keep_KxBsxBs = valid_KxBs[:, None, :]
  if causal:
    # Every position, whatever the tile: the contract for any pattern.
    q_pos_KxBs = rows_K[:, None] * bs + jnp.arange(bs)[None, :]
    k_pos_KxBs = cols_K[:, None] * bs + jnp.arange(bs)[None, :]
    keep_KxBsxBs = keep_KxBsxBs & (k_pos_KxBs[:, None, :] <= q_pos_KxBs[:, :, None])
  s_KxBsxBs = jnp.where(keep_KxBsxBs, s_KxBsxBs, -jnp.inf)

  # The per-query maximum over every selected tile of its block row (the published
  # `index_max`), merged with the initial state's maximum.
  tile_max_KxBs = jnp.max(s_KxBsxBs, axis=-1)
  row_max_NqxBs = jax.ops.segment_max(
    tile_max_KxBs, rows_K, num_segments=Nq, indices_are_sorted=True
  )
  m_Lq = jnp.maximum(m0_Lq, row_max_NqxBs.reshape(Lq))
  m_Lq = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m_Lq), m_Lq, 0.0))
  m_NqxBs = m_Lq.reshape(Nq, bs)

  p_KxBsxBs = jnp.exp(s_KxBsxBs - m_NqxBs[rows_K][:, :, None])
  num_NqxBsxD = jax.ops.segment_sum(
    jnp.einsum("kij,kjd->kid", p_KxBsxBs, v_KxBsxD),
    rows_K,
    num_segments=Nq,
    indices_are_sorted=True,
  )
  den_NqxBs = jax.ops.segment_sum(
    jnp.sum(p_KxBsxBs, axis=-1), rows_K, num_segments=Nq, indices_are_sorted=True
  )

  init_scale_Lq = jnp.exp(m0_Lq - m_Lq)
  l_Lq = l0_Lq * init_scale_Lq + den_NqxBs.reshape(Lq)
  acc_LqxD = acc0_LqxD * init_scale_Lq[:, None] + num_NqxBsxD.reshape(Lq, D)
  out_LqxD = acc_LqxD / (l_Lq + eps)[:, None]
  lse_Lq = m_Lq + jnp.log(l_Lq + eps)
  return out_LqxD, lse_Lq


def block_sparse_attention_reference(
  q_BxHxLqxD: jax.Array,
  k_BxHkxLkxD: jax.Array,
  v_BxHkxLkxD: jax.Array,
  tile_ids_BxHkxK: jax.Array,
  key_valid_BxLk: jax.Array,
  m0_BxHxLq: jax.Array,
  l0_BxHxLq: jax.Array,
  acc0_BxHxLqxD: jax.Array,
  *,
  block_size: int,
  scale: float | None = None,
  eps: float = DEFAULT_EPS,
  causal: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """Block-sparse attention from an initial softmax state, in one shot of pure `jnp`.

  The contract every implementation is tested against (see the module doc). Memory grows
  with the number of selected tiles times `block_size**2`: meant for tests and small inputs.

  Args:
    q_BxHxLqxD: queries, float32 / bfloat16 / float16; Lq a multiple of `block_size`.
    k_BxHkxLkxD: keys, q's dtype; Lk a multiple of `block_size`; Hk divides H.
    v_BxHkxLkxD: values, q's dtype.
    tile_ids_BxHkxK: int flat tile ids `r * (Lk // block_size) + c` per kv head, sorted,
      unique.
    key_valid_BxLk: bool, False for padded keys (they get no weight).
    m0_BxHxLq: initial running maximum (-inf: empty state), cast to float32.
    l0_BxHxLq: initial normaliser on the scale of `m0`, cast to float32.
    acc0_BxHxLqxD: initial numerator on the scale of `m0`, cast to float32.
    block_size: tokens per block (tile side), any positive size.
    scale: logit scale; default `1 / sqrt(D)`.
    eps: added to the normaliser (the published code's 1e-6).
    causal: mask keys after each query (Lq == Lk), whatever the tiles.

  Returns:
    `(out_BxHxLqxD, lse_BxHxLq)`, both float32.

  Raises:
    ValueError: on bad shapes or dtypes (see `check_inputs`).
  """
  args = (
    q_BxHxLqxD,
    k_BxHkxLkxD,
    v_BxHkxLkxD,
    tile_ids_BxHkxK,
    key_valid_BxLk,
    m0_BxHxLq,
    l0_BxHxLq,
    acc0_BxHxLqxD,
  )
  reference = Reference()
  check_inputs(*args, block_size=block_size, implementation=reference, causal=causal)
  scale = q_BxHxLqxD.shape[-1] ** -0.5 if scale is None else float(scale)
  return reference(*args, block_size=block_size, scale=scale, eps=float(eps), causal=causal)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Reference(Implementation):
  """The one-shot `jnp` reference as an implementation (no options; any block size).

  Grouped-query attention repeats each kv head (and its tile ids) for its query heads, so
  that the reference says what the op computes in the plainest terms.
  """

  NAME: ClassVar[str] = "reference"

  def __call__(
    self,
    q_BxHxLqxD,
    k_BxHkxLkxD,
    v_BxHkxLkxD,
    tile_ids_BxHkxK,
    key_valid_BxLk,
    m0_BxHxLq,
    l0_BxHxLq,
    acc0_BxHxLqxD,
    *,
    block_size: int,
    scale: float,
    eps: float,
    causal: bool,
  ) -> tuple[jax.Array, jax.Array]:
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    group = q_BxHxLqxD.shape[1] // k_BxHkxLkxD.shape[1]
    per_query_head = lambda x: jnp.repeat(x, group, axis=1) if group > 1 else x
    one_head = lambda q, k, v, ids, valid, m0, l0, acc0: _one_head_reference(
      q, k, v, ids, valid, m0, l0, acc0, block_size=block_size, scale=scale, eps=eps, causal=causal
    )
    # heads share the key mask; batch elements share nothing.
    per_batch = jax.vmap(one_head, in_axes=(0, 0, 0, 0, None, 0, 0, 0))
    return jax.vmap(per_batch)(
      f32(q_BxHxLqxD),
      per_query_head(f32(k_BxHkxLkxD)),
      per_query_head(f32(v_BxHkxLkxD)),
      per_query_head(tile_ids_BxHkxK),
      key_valid_BxLk.astype(bool),
      f32(m0_BxHxLq),
      f32(l0_BxHxLq),
      f32(acc0_BxHxLqxD),
    )
