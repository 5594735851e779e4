"""What the Mosaic TPU kernels share: the streamed walk over a row's tiles, layouts, VMEM sizes.

The kernels stream. Each program (one query block for forward and dQ, one key block for dK/dV)
holds its own block in VMEM through the BlockSpec pipeline; the blocks it visits stay in HBM
(`memory_space=pl.ANY`) and come in one tile at a time by DMA into a two-slot VMEM scratch,
the next tile's copy running while the current tile is computed. The program's tile list is
read from HBM as well: its two CSR offsets into a 2-word SMEM scratch, then its indices in
fixed chunks (`Static.index_chunk`, `INDEX_CHUNK` by default) into an SMEM scratch. So VMEM
and SMEM hold a fixed number of tiles whatever B, H, L or the number of selected tiles: a row with every key block and a row
with none cost the same memory.

Index layouts (built by `offsets_by_program` and `chunked_indices`, int32, leading axis
G = B * Hk): the offsets as `(G, N, 2)` (start, stop of each program's run of tiles; for a
causal op `(G, N, 3)`, start, split, stop, the split being where the run meets the diagonal,
`index_views.TileViews`) and the indices as `(G, n_chunks, index_chunk)`, so that every DMA
indexes leading axes only.

Grouped-query attention stacks a kv head's query heads block by block (`layouts`): forward
and dQ programs hold the group's `group * bs` rows of a query block (one K/V tile copy
serves them all), their per-query vectors as `(group, bs)` rows; dK/dV programs walk their
column over (tile, query head) pairs (`index_views.per_group_member`).
"""
# pylint: disable=invalid-name

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

# Tile indices held in SMEM at once (per program) by default; 512 bytes. A row's list is read
# in chunks of this size, so SMEM use does not grow with the number of tiles.
INDEX_CHUNK = 128
_LANES = 128


class Static(NamedTuple):
  """The op's static settings, shared by the forward and backward launches.

  Attributes:
    num_heads: Hk, the kv heads (programs of one batch element share its key mask).
    block_size: tile side, in `pallas_mosaic_tpu.BLOCK_SIZES`.
    scale: logit scale.
    eps: added to the normaliser.
    index_chunk: tile indices per SMEM chunk.
    interpret: None (decided at lowering, see `call`), a bool or a `pltpu.InterpretParams`.
    group: query heads per kv head (grouped-query attention; 1 otherwise).
    causal: mask keys after each query on the tiles that reach the diagonal.
  """

  num_heads: int
  block_size: int
  scale: float
  eps: float
  index_chunk: int
  interpret: Any
  group: int = 1
  causal: bool = False


def dot_nt(a_MxD, b_NxD, precision):
  """`a @ b^T` in float32."""
  return jax.lax.dot_general(
    a_MxD, b_NxD, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=jnp.float32
  )


def dot_nn(a_MxK, b_KxN, precision):
  """`a @ b` in float32."""
  return jax.lax.dot_general(
    a_MxK, b_KxN, (((1,), (0,)), ((), ())), precision=precision, preferred_element_type=jnp.float32
  )


def precision_for(dtype):
  """IEEE float32 on the MXU for float32 inputs; the native pass otherwise."""
  return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None


def offsets_by_program(ptr_GxN1: jax.Array, split_GxN: jax.Array | None = None) -> jax.Array:
  """CSR offsets `(G, N + 1)` as `(G, N, 2)`: (start, stop) of each program's tiles; with
  causal splits `(G, N)`, `(G, N, 3)`: (start, split, stop)."""
  parts = [ptr_GxN1[:, :-1], ptr_GxN1[:, 1:]]
  if split_GxN is not None:
    parts.insert(1, split_GxN)
  return jnp.stack(parts, axis=-1)


def chunked_indices(indices_GxK: jax.Array, chunk: int) -> jax.Array:
  """`(G, K)` indices as `(G, ceil(K / chunk), chunk)`, zero-padded (never read)."""
  G, K = indices_GxK.shape
  n_chunks = -(-K // chunk)
  padded = jnp.pad(indices_GxK, ((0, 0), (0, n_chunks * chunk - K)))
  return padded.reshape(G, n_chunks, chunk)


def index_scratch_shapes(chunk: int, causal: bool = False):
  """Scratch for `read_offsets` / `stream_tiles`: offsets, index chunk, their semaphore."""
  return [
    pltpu.SMEM((3 if causal else 2,), jnp.int32),
    pltpu.SMEM((chunk,), jnp.int32),
    pltpu.SemaphoreType.DMA(()),
  ]


def read_offsets(offsets_hbm, g, i, offsets_smem, sem):
  """(start, stop), or (start, split, stop), of program (g, i)'s tiles, copied from HBM."""
  copy = pltpu.make_async_copy(offsets_hbm.at[g, i], offsets_smem, sem)
  copy.start()
  copy.wait()
  return tuple(offsets_smem[j] for j in range(offsets_smem.shape[0]))


def stream_tiles(
  g,
  start,
  stop,
  indices_hbm,
  index_smem,
  index_sem,
  tile_copies,
  compute,
  init,
  *,
  split=None,
  masked_compute=None,
  masked_first: bool = False,
):
  """Folds `compute` over tiles `start..stop` of head g, double-buffering their DMAs.

  Tile t's block index is `indices_hbm[g, t // chunk, t % chunk]` (chunk: the SMEM scratch's
  size). Its copies go
  to slot `(t - start) % 2` of the caller's scratch; tile t + 1's copies start before tile t
  is computed, so one DMA is always in flight behind the compute.

  Args:
    g: the program's head (leading-axis index, a scalar).
    start, stop: the program's tiles (scalars; an empty range does nothing).
    indices_hbm: `(G, n_chunks, chunk)` int32 block indices in HBM.
    index_smem: `(chunk,)` int32 SMEM scratch; index_sem: a DMA semaphore.
    tile_copies: `(block_index, slot) -> [AsyncCopyDescriptor]`, the copies of one tile.
    compute: `(slot, carry) -> carry`, run once the slot's copies have landed.
    init: the initial carry.
    split, masked_compute: causal kernels: the tiles that reach the diagonal, `split..stop`
      (a row's last ones) or with `masked_first` `start..split` (a column's first ones),
      run `masked_compute(slot, carry, block_index)` instead, in a loop of their own, so
      the other tiles pay nothing for the mask.

  Returns:
    The final carry (`init` for an empty range).
  """
  chunk = index_smem.shape[0]

  def load_chunk(t):
    # Synchronous, once per `chunk` tiles: the entries before t are no longer needed (their
    # copies have started), so one buffer is enough.
    copy = pltpu.make_async_copy(indices_hbm.at[g, jax.lax.div(t, chunk)], index_smem, index_sem)
    copy.start()
    copy.wait()

  def start_tile(t, slot):
    for copy in tile_copies(index_smem[jax.lax.rem(t, chunk)], slot):
      copy.start()

  @pl.when(start < stop)
  def _prologue():
    load_chunk(start)
    start_tile(start, 0)

  def body(compute, masked, t, carry):
    slot = jax.lax.rem(t - start, 2)
    following = t + 1
    # Tile t's index, read before the chunk holding t + 1's may replace its chunk.
    block = index_smem[jax.lax.rem(t, chunk)] if masked else None

    @pl.when((following < stop) & (jax.lax.rem(following, chunk) == 0))
    def _next_chunk():
      load_chunk(following)

    @pl.when(following < stop)
    def _prefetch():
      start_tile(following, 1 - slot)

    # A wait needs only the destination and semaphore: any source block of the right shape.
    for copy in tile_copies(0, slot):
      copy.wait()
    return masked_compute(slot, carry, block) if masked else compute(slot, carry)

  if split is None:
    return jax.lax.fori_loop(start, stop, functools.partial(body, compute, False), init)
  first, second = (True, False) if masked_first else (False, True)
  carry = jax.lax.fori_loop(start, split, functools.partial(body, compute, first), init)
  return jax.lax.fori_loop(split, stop, functools.partial(body, compute, second), carry)


def call(static: Static, build, operands):
  """`build(static)(*operands)`; `static.interpret` None is decided by the lowering platform.

  With None, a program lowered for TPU gets the compiled kernel and any other platform the
  HLO interpreter, decided when the program is lowered (`lax.platform_dependent`), so a
  program compiled for a TPU target from a CPU host gets the real kernel.
  """
  if static.interpret is None:
    return jax.lax.platform_dependent(
      *operands,
      tpu=lambda *xs: build(static._replace(interpret=False))(*xs),
      default=lambda *xs: build(static._replace(interpret=True))(*xs),
    )
  return build(static)(*operands)


def _diagonal(n):
  return jax.lax.broadcasted_iota(jnp.int32, (n, n), 0) == jax.lax.broadcasted_iota(
    jnp.int32, (n, n), 1
  )


def row_to_column(x_1xN):
  """`(1, n)` -> `(n, 1)`, exactly, through a diagonal mask and a lane sum (no transpose).

  Per-query vectors travel as `(1, bs)` rows: a `(bs, 1)` column pads to 128 lanes in HBM.
  """
  n = x_1xN.shape[1]
  return jnp.sum(jnp.where(_diagonal(n), x_1xN, 0.0), axis=1, keepdims=True)


def column_to_row(x_Nx1):
  """`(n, 1)` -> `(1, n)`, exactly (see `row_to_column`)."""
  n = x_Nx1.shape[0]
  return jnp.sum(jnp.where(_diagonal(n), x_Nx1, 0.0), axis=0, keepdims=True)


def rows_to_column(ref):
  """A `(group, bs)` ref of per-query rows (a group's query heads) as one `(group * bs, 1)`
  column, in the stacked row order (`layouts`)."""
  group = ref.shape[0]
  if group == 1:
    return row_to_column(ref[...])
  return jnp.concatenate([row_to_column(ref[pl.ds(h, 1), :]) for h in range(group)], axis=0)


def store_column_as_rows(ref, x_Rx1):
  """Writes a `(group * bs, 1)` column into a `(group, bs)` ref of rows (`rows_to_column`)."""
  group, bs = ref.shape
  if group == 1:
    ref[...] = column_to_row(x_Rx1)
    return
  for h in range(group):
    ref[pl.ds(h, 1), :] = column_to_row(x_Rx1[h * bs : (h + 1) * bs])


def row_block_spec(block_size, group: int = 1):
  """BlockSpec of a `(G, N, group, bs)` per-query (or per-key) row array: program (g, i)'s
  `(group, bs)` rows."""
  return pl.BlockSpec((None, None, group, block_size), lambda g, i: (g, i, 0, 0))


def causal_keep(num_rows: int, row_block, col_block, block_size: int, *, rows_are_queries):
  """`(num_rows, bs)` bool: where a tile's key position is at or before its query position.

  Rows are whole blocks stacked (a row's position in its block is its index mod bs), of
  block `row_block`; columns the bs positions of block `col_block`. Rows are queries
  (forward, dQ) or keys (the transposed dK/dV tile).
  """
  bs = block_size
  shape = (num_rows, bs)
  i = jnp.bitwise_and(jax.lax.broadcasted_iota(jnp.int32, shape, 0), bs - 1)
  j = jax.lax.broadcasted_iota(jnp.int32, shape, 1)
  if rows_are_queries:
    return (col_block - row_block) * bs + j <= i
  return (row_block - col_block) * bs + i <= j


def padded_bytes(rows: int, cols: int, dtype) -> int:
  """VMEM bytes of a `(rows, cols)` buffer padded to TPU tiles (sublanes x 128 lanes).

  Sublane tiles hold 32 bits per lane: 8 rows of float32, 16 of bfloat16.
  """
  itemsize = jnp.dtype(dtype).itemsize
  sublanes = 8 * 4 // itemsize
  return -(-rows // sublanes) * sublanes * -(-cols // _LANES) * _LANES * itemsize


def vmem_bytes(
  kernel: str, *, block_size: int, head_dim: int, dtype, group: int = 1
) -> dict[str, int]:
  """VMEM bytes of one kernel's buffers, padded to TPU tiles; none grows with B, H, L or K.

  Args:
    kernel: "forward", "dq" or "dkv".
    block_size: tile side (rows of every block).
    head_dim: D.
    dtype: q/k/v's dtype.
    group: query heads per kv head: forward and dQ programs hold `group` blocks of rows.

  Returns:
    {"pipelined": the program's own blocks, two buffers each (BlockSpec pipeline);
     "scratch": the two slots of streamed tiles; "total": their sum}. Mosaic adds its own
    scratch for intermediate values; `benchmarks.compile_report_tpu` prints these beside
    what the compiler allocates.
  """
  bs, D, f32 = block_size, head_dim, jnp.float32
  blk = lambda cols, dt=f32: padded_bytes(bs, cols, dt)
  # The group's query rows of a block (forward, dQ).
  q_blk = lambda cols, dt=f32: padded_bytes(group * bs, cols, dt)
  # A (1, bs) row (key mask, per-query vector) is one 128-lane row of 32-bit words; a
  # group's per-query vectors are `group` such rows.
  row = -(-bs // _LANES) * _LANES * 4
  q_rows = group * row
  if kernel == "forward":
    # in: q, m0, l0, acc0; out: out, lse; slots: K, V, key-mask row.
    own = q_blk(D, dtype) + 2 * q_rows + q_blk(D) + q_blk(D) + q_rows
    slot = 2 * blk(D, dtype) + row
  elif kernel == "dq":
    # in: q, dO, lse, delta; out: dq; slots: K, V, key-mask row.
    own = 2 * q_blk(D, dtype) + 2 * q_rows + q_blk(D, dtype)
    slot = 2 * blk(D, dtype) + row
  elif kernel == "dkv":
    # in: k, v, key-mask row; out: dk, dv; slots: Q, dO, lse row, delta row.
    own = 2 * blk(D, dtype) + row + 2 * blk(D, dtype)
    slot = 2 * blk(D, dtype) + 2 * row
  else:
    raise ValueError(f"kernel must be 'forward', 'dq' or 'dkv', got {kernel=}")
  sizes = {"pipelined": 2 * own, "scratch": 2 * slot}
  sizes["total"] = sizes["pipelined"] + sizes["scratch"]
  return sizes
