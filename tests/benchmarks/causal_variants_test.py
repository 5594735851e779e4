"""`python -m benchmarks.causal_variants` on random inputs: every variant, errors that mean it."""

import json

import pytest

from benchmarks import causal_variants


@pytest.mark.slow
def test_rows_per_variant_and_a_full_budget_is_exact(tmp_path):
  # Length 128 is 4 blocks: block_per_row=4 covers every past tile, so causal MRA is causal
  # softmax (error at float32 round-off), while 1 block per row is a real approximation.
  rows = causal_variants.main(
    ["--length=128", "--examples=1", "--block_per_row=1,4", "--repeats=1", f"--out={tmp_path}"]
  )
  methods = {row["method"] for row in rows}
  assert len(methods) == 7 and "local (equal keys)" in methods
  for row in rows:
    if row["method"].startswith("MRA"):
      if row["block_per_row"] == 4:
        assert row["relative_error"] < 1e-5, row
      else:
        assert row["relative_error"] > 1e-2, row
  assert json.loads((tmp_path / "causal_variants.json").read_text())["rows"] == rows
