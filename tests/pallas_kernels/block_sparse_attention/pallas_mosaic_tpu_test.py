"""The Pallas Mosaic TPU kernels against the contract, in both interpret modes on CPU.

Both interpreters run the kernels' DMAs and semaphores: `interpret=True` as HLO, and
`pltpu.InterpretParams` with simulated HBM/VMEM/SMEM, DMA completion on wait, and a race
detector. The small-chunk classes read the tile lists a few entries at a time, so that rows
cross index-chunk boundaries (the default chunk is larger than any row here).
"""

import pytest

# The race detector's findings are kept only in the interpreter's module state.
from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interpreter
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.block_sparse_attention.pallas_mosaic_tpu import PallasMosaicTpu
from tests.pallas_kernels.block_sparse_attention import contract


class TestPallasMosaicTpuInterpret(contract.BlockSparseAttentionContract):
  IMPLEMENTATION = PallasMosaicTpu(interpret=True)
  CASE_NAMES = (*contract.DEFAULT_CASE_NAMES, "bf16_bs128_two_rows", "bf16_bs128_causal")
  FAST_CASE_NAMES = (*contract.INTERPRETER_FAST_CASE_NAMES, "bf16_bs128_causal")


class TestPallasMosaicTpuInterpretSmallIndexChunks(contract.BlockSparseAttentionContract):
  """Chunks of 3 tile indices: rows start and end mid-chunk and span several chunks."""

  pytestmark = pytest.mark.slow

  IMPLEMENTATION = PallasMosaicTpu(index_chunk=3, interpret=True)
  CASE_NAMES = ("f32_bs32_mra_state", "f32_batch_padding_cross_lengths")


class TestPallasMosaicTpuTpuInterpret(contract.BlockSparseAttentionContract):
  """TPU semantics (simulated memories and DMAs, race detection, output-revisit checks), which
  cost milliseconds per grid step: two small cases (bidirectional; causal with 2 query heads
  on 1 kv head), their tile lists read one index at a time."""

  pytestmark = pytest.mark.slow

  IMPLEMENTATION = PallasMosaicTpu(
    index_chunk=1, interpret=pltpu.InterpretParams(detect_races=True)
  )
  CASE_NAMES = ("f32_bs64_two_rows", "f32_bs64_causal_gqa_two_rows")
  # The causal properties hold in the HLO interpreter's classes; here they cost 20 s.
  test_causal_with_every_lower_tile_is_dense_causal_attention = None
  test_causal_query_ignores_later_keys = None

  @pytest.fixture(autouse=True)
  def _check_races_and_reset(self):
    yield
    races = tpu_interpreter.races
    pltpu.reset_tpu_interpret_mode_state()
    assert races is not None and not races.races_found, "the race detector found a race"
