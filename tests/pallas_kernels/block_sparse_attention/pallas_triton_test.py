"""The Pallas Triton kernels against the contract, in interpret mode on CPU."""

from tests.pallas_kernels.block_sparse_attention import contract


class TestPallasTritonInterpret(contract.BlockSparseAttentionContract):
  IMPLEMENTATION = "pallas_triton"
  INTERPRET = True
