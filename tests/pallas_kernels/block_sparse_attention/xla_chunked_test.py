"""The chunked XLA implementation against the contract, in one chunk and in many."""

from pallas_kernels.block_sparse_attention import xla_chunked
from tests.pallas_kernels.block_sparse_attention import contract


class TestXlaChunked(contract.BlockSparseAttentionContract):
  IMPLEMENTATION = xla_chunked.XlaChunked()


class TestXlaChunkedSmallChunks(contract.BlockSparseAttentionContract):
  """Three 32x32 tiles of D=32 keys a chunk: several chunks, the last one partly filler."""

  IMPLEMENTATION = xla_chunked.XlaChunked(chunk_bytes=3 * 32 * 32 * 4)
  CASE_NAMES = ("f32_bs32_mra_state", "f32_batch_padding_cross_lengths")
