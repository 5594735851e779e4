"""Smoke tests: `benchmarks.efficiency` runs end to end at a tiny setting (not timed)."""

import json

import pytest

from benchmarks import _methods, efficiency

_TINY = ["--lengths=128", "--methods=softmax,mra2", "--heads=2", "--head_dim=16", "--repeats=1"]


@pytest.mark.slow  # a whole sweep
def test_writes_json_and_plots(tmp_path):
  efficiency.main(_TINY + [f"--out={tmp_path}"])
  report = json.loads((tmp_path / "efficiency.json").read_text())
  rows = report["results"]
  # MRA budgets are capped at L/64 blocks per row, as the paper's profiler did.
  assert [(r["length"], r["label"]) for r in rows] == [
    (128, "softmax"),
    (128, "mra2[block_per_row=1]"),
    (128, "mra2[block_per_row=2]"),
  ]
  for r in rows:
    assert r["status"] == "ok", r
    assert r["seconds"] > 0 and len(r["all_seconds"]) == 1
    assert r["temp_bytes"] > 0
  soft, mra = rows[0], rows[2]
  assert soft["time_ratio_vs_softmax"] == 1.0 and soft["temp_ratio_vs_softmax"] == 1.0
  assert mra["time_ratio_vs_softmax"] == pytest.approx(mra["seconds"] / soft["seconds"])
  assert mra["temp_ratio_vs_softmax"] == pytest.approx(mra["temp_bytes"] / soft["temp_bytes"])
  assert report["setting"]["heads"] == 2 and report["setting"]["hardware"]["jax"]
  for png in ("efficiency_time.png", "efficiency_memory.png"):
    assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    (tmp_path / png).unlink()
  efficiency.main(["--plot_only", f"--out={tmp_path}"])
  for png in ("efficiency_time.png", "efficiency_memory.png"):
    assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_over_memory_budget_is_reported_not_run(tmp_path):
  efficiency.main(
    [
      "--lengths=64",
      "--methods=softmax",
      "--heads=2",
      "--head_dim=16",
      "--repeats=1",
      "--max_temp_gib=1e-9",
      f"--out={tmp_path}",
    ]
  )
  (row,) = json.loads((tmp_path / "efficiency.json").read_text())["results"]
  assert row["status"] == "too_big"
  assert row["seconds"] is None and row["temp_bytes"] > 0


def test_unknown_method_is_reported_and_sweep_continues(tmp_path):
  report = efficiency.run(
    lengths=[64],
    names=["softmax", "no_such_attention"],
    budgets=None,
    batch=1,
    heads=1,
    head_dim=8,
    repeats=1,
    max_temp_bytes=2**30,
    max_call_seconds=60.0,
    out_dir=str(tmp_path),
    log=lambda s: None,
  )
  # An unknown name fails when its knobs are read, before any row: it is one problem line,
  # and the sweep still measures the rest.
  (problem,) = report["problems"]
  assert problem.startswith("no_such_attention: knob_defaults failed: ValueError:"), problem
  assert "unknown attention name='no_such_attention'" in problem
  assert [(r["name"], r["status"]) for r in report["results"]] == [("softmax", "ok")]


def test_bad_arguments_name_themselves(tmp_path):
  with pytest.raises(ValueError, match="repeats=0"):
    efficiency.run(
      lengths=[64],
      names=["softmax"],
      budgets=None,
      batch=1,
      heads=1,
      head_dim=8,
      repeats=0,
      max_temp_bytes=2**30,
      max_call_seconds=1.0,
      out_dir=str(tmp_path),
    )


def test_budget_caps_follow_the_paper():
  methods, _ = _methods.methods_for(["mra2", "nystromformer"], None)
  at_512 = [m.label for m in methods if _methods.fits(m, 512)]
  assert "mra2[block_per_row=8]" in at_512 and "mra2[block_per_row=16]" not in at_512
  at_4096 = [m.budget for m in methods if _methods.fits(m, 4096) and m.name == "mra2"]
  assert at_4096 == [1, 2, 4, 8, 16, 32, 64]
