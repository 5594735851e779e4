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
G = B * H): the offsets as `(G, N, 2)` (start, stop of each program's run of tiles) and the
indices as `(G, n_chunks, index_chunk)`, so that every DMA indexes leading axes only.
"""
# pylint: disable=invalid-name

from __future__ import annotations

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
    num_heads: H (programs of one batch element share its key mask).
    block_size: tile side, in `pallas_mosaic_tpu.BLOCK_SIZES`.
    scale: logit scale.
    eps: added to the normaliser.
    index_chunk: tile indices per SMEM chunk.
    interpret: None (decided at lowering, see `call`), a bool or a `pltpu.InterpretParams`.
  """

  num_heads: int
  block_size: int
  scale: float
  eps: float
  index_chunk: int
  interpret: Any


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


def offsets_by_program(ptr_GxN1: jax.Array) -> jax.Array:
  """CSR offsets `(G, N + 1)` as `(G, N, 2)`: (start, stop) of each program's tiles."""
  return jnp.stack([ptr_GxN1[:, :-1], ptr_GxN1[:, 1:]], axis=-1)


def chunked_indices(indices_GxK: jax.Array, chunk: int) -> jax.Array:
  """`(G, K)` indices as `(G, ceil(K / chunk), chunk)`, zero-padded (never read)."""
  G, K = indices_GxK.shape
  n_chunks = -(-K // chunk)
  padded = jnp.pad(indices_GxK, ((0, 0), (0, n_chunks * chunk - K)))
  return padded.reshape(G, n_chunks, chunk)


def index_scratch_shapes(chunk: int):
  """Scratch for `read_offsets` / `stream_tiles`: offsets, index chunk, their semaphore."""
  return [
    pltpu.SMEM((2,), jnp.int32),
    pltpu.SMEM((chunk,), jnp.int32),
    pltpu.SemaphoreType.DMA(()),
  ]


def read_offsets(offsets_hbm, g, i, offsets_smem, sem):
  """(start, stop) of program (g, i)'s run of tiles, copied from HBM."""
  copy = pltpu.make_async_copy(offsets_hbm.at[g, i], offsets_smem, sem)
  copy.start()
  copy.wait()
  return offsets_smem[0], offsets_smem[1]


def stream_tiles(g, start, stop, indices_hbm, index_smem, index_sem, tile_copies, compute, init):
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

  def body(t, carry):
    slot = jax.lax.rem(t - start, 2)
    following = t + 1

    @pl.when((following < stop) & (jax.lax.rem(following, chunk) == 0))
    def _next_chunk():
      load_chunk(following)

    @pl.when(following < stop)
    def _prefetch():
      start_tile(following, 1 - slot)

    # A wait needs only the destination and semaphore: any source block of the right shape.
    for copy in tile_copies(0, slot):
      copy.wait()
    return compute(slot, carry)

  return jax.lax.fori_loop(start, stop, body, init)


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


def row_block_spec(block_size):
  """BlockSpec of a `(G, N, 1, bs)` per-query (or per-key) row array: program (g, i)'s row."""
  return pl.BlockSpec((None, None, 1, block_size), lambda g, i: (g, i, 0, 0))


def padded_bytes(rows: int, cols: int, dtype) -> int:
  """VMEM bytes of a `(rows, cols)` buffer padded to TPU tiles (sublanes x 128 lanes).

  Sublane tiles hold 32 bits per lane: 8 rows of float32, 16 of bfloat16.
  """
  itemsize = jnp.dtype(dtype).itemsize
  sublanes = 8 * 4 // itemsize
  return -(-rows // sublanes) * sublanes * -(-cols // _LANES) * _LANES * itemsize


def vmem_bytes(kernel: str, *, block_size: int, head_dim: int, dtype) -> dict[str, int]:
  """VMEM bytes of one kernel's buffers, padded to TPU tiles; none grows with B, H, L or K.

  Args:
    kernel: "forward", "dq" or "dkv".
    block_size: tile side (rows of every block).
    head_dim: D.
    dtype: q/k/v's dtype.

  Returns:
    {"pipelined": the program's own blocks, two buffers each (BlockSpec pipeline);
     "scratch": the two slots of streamed tiles; "total": their sum}. Mosaic adds its own
    scratch for intermediate values; `benchmarks.compile_report_tpu` prints these beside
    what the compiler allocates.
  """
  bs, D, f32 = block_size, head_dim, jnp.float32
  blk = lambda cols, dt=f32: padded_bytes(bs, cols, dt)
  # A (1, bs) row (key mask, per-query vector) is one 128-lane row of 32-bit words.
  row = -(-bs // _LANES) * _LANES * 4
  if kernel == "forward":
    # in: q, m0, l0, acc0; out: out, lse; slots: K, V, key-mask row.
    own = blk(D, dtype) + 2 * row + blk(D) + blk(D) + row
    slot = 2 * blk(D, dtype) + row
  elif kernel == "dq":
    # in: q, dO, lse, delta; out: dq; slots: K, V, key-mask row.
    own = 2 * blk(D, dtype) + 2 * row + blk(D, dtype)
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
