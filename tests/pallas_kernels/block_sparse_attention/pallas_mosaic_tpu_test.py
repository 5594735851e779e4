"""The Pallas Mosaic TPU kernels against the contract, in both interpret modes on CPU."""

import pytest
from jax.experimental.pallas import tpu as pltpu

from tests.pallas_kernels.block_sparse_attention import contract


class TestPallasMosaicTpuInterpret(contract.BlockSparseAttentionContract):
  IMPLEMENTATION = "pallas_mosaic_tpu"
  INTERPRET = True
  CASE_NAMES = (*contract.DEFAULT_CASE_NAMES, "bf16_bs128_two_rows")


class TestPallasMosaicTpuTpuInterpret(contract.BlockSparseAttentionContract):
  """TPU semantics (simulated VMEM/SMEM, scalar prefetch, output-revisit checks), which cost
  milliseconds per grid step: one small case."""

  IMPLEMENTATION = "pallas_mosaic_tpu"
  INTERPRET = pltpu.InterpretParams()
  CASE_NAMES = ("f32_bs64_two_rows",)

  @pytest.fixture(autouse=True)
  def _reset_interpreter(self):
    yield
    pltpu.reset_tpu_interpret_mode_state()
