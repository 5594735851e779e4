"""The kernel benchmark script runs end to end in its CPU smoke mode and reports what it says."""

import pytest

import pallas_kernels
from benchmarks import _timing, kernels

# The slow tier: each run compiles and times the kernels in interpret mode.
pytestmark = pytest.mark.slow

# --quick: L=256, B=H=1, D=64, block 32, 8 tiles per block row.
_QUICK_TILES = 8 * 256 // 32
_QUICK_FLOPS_FWD = 4 * 32 * 32 * 64 * _QUICK_TILES  # QK^T and PV per tile, 2 * bs^2 * D each


def test_quick_run_reports_sparse_mra2_and_dense():
  (row,) = kernels.main(["--quick", "--dtypes", "float32", "--precisions", "default"])
  assert row["L"] == 256 and row["tiles_per_head"] == _QUICK_TILES
  assert row["implementation"] == "pallas_triton" and row["precision"] == "default"
  assert row["sparse_fwd_flops"] == _QUICK_FLOPS_FWD
  assert row["sparse_fwd_tflops"] == pytest.approx(
    _QUICK_FLOPS_FWD / row["sparse_fwd_ms"] / 1e9, rel=1e-9
  )
  assert row["sparse_fwdbwd_tflops"] == pytest.approx(
    3.5 * _QUICK_FLOPS_FWD / row["sparse_fwdbwd_ms"] / 1e9, rel=1e-9
  )
  assert row["dense_impl"] == "xla"
  assert set(row["sparse_fwdbwd_memory"]) == {"temp", "args", "out"}
  assert row["mra2_speedup_fwdbwd"] == pytest.approx(row["dense_fwdbwd_ms"] / row["mra2_fwdbwd_ms"])


def test_float32_rows_per_precision_and_one_native_bfloat16_row():
  rows = kernels.main(
    ["--quick", "--dtypes", "float32,bfloat16", "--precisions", "float32,bf16"]
    + ["--skip_dense", "--skip_mra"]
  )
  assert [(r["dtype"], r["precision"]) for r in rows] == [
    ("float32", "float32"),
    ("float32", "bf16"),
    ("bfloat16", "native"),
  ]
  assert all(r["sparse_fwd_flops"] == _QUICK_FLOPS_FWD for r in rows)
  assert not any("dense_fwd_ms" in r or "mra2_fwd_ms" in r for r in rows)


def test_all_precisions_is_the_packages_table():
  args = kernels._parse_args(["--quick"])  # pylint: disable=protected-access
  assert args.precisions == pallas_kernels.F32_PRECISIONS


def test_flop_formulas_by_hand():
  # One 64x64 tile, D=128, B=2, H=3: 2 * 64*64*128 for QK^T, the same for PV, per head.
  assert _timing.selected_tile_flops(2, 3, 1, 64, 128) == 6 * 4 * 64 * 64 * 128
  # Dense self-attention is every tile: (L / bs)^2 of them.
  assert _timing.dense_attention_flops(2, 3, 256, 128) == _timing.selected_tile_flops(
    2, 3, (256 // 64) ** 2, 64, 128
  )
