"""`python -m benchmarks.device_check --quick` on CPU: the report, and that it catches a bad kernel.

One run (about 30 s on two cores) is shared by the tests; in it the "xla_chunked"
implementation is made wrong on purpose, so the report must flag every case that uses it and
no other.
"""

import dataclasses
import datetime
import importlib.metadata
import json
import re

import jax
import pytest

from benchmarks import device_check
from pallas_kernels.block_sparse_attention import api
from tools import source_stamp

# The slow tier: one --quick device check (about 2 minutes on 2 cores) serves the file.
pytestmark = pytest.mark.slow

_WRONG = "xla_chunked"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  out = tmp_path_factory.mktemp("device_check")

  @dataclasses.dataclass(frozen=True)
  class OffByAHundredth(type(api.IMPLEMENTATIONS[_WRONG])):
    def __call__(self, *args, **kwargs):
      attended, lse = super().__call__(*args, **kwargs)
      return attended + 1e-2, lse

  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(api.IMPLEMENTATIONS, _WRONG, OffByAHundredth())
    # A generous time budget: a busy CI machine must not turn rows into "skipped".
    assert device_check.main(["--quick", f"--out={out}", "--time_budget_s=1200"]) == 0
  data = json.loads((out / "device_check.json").read_text())
  return data, (out / "device_check.md").read_text()


def test_report_says_which_device_versions_and_commit(report):
  env = report[0]["environment"]
  assert env["device"] == jax.devices()[0].device_kind
  assert (env["jax"], env["platform"]) == (jax.__version__, "cpu")
  assert env["jaxlib"] == importlib.metadata.version("jaxlib")
  commit, dirty = source_stamp.git_state(device_check.REPO_ROOT)
  assert (env["commit"], env["dirty"], env["commit_source"]) == (commit, dirty, "git")


def test_wrong_implementation_is_a_mismatch_and_the_others_pass(report):
  checks = report[0]["checks"]
  by_impl = {
    impl: [row for row in checks if row["implementation"] == impl]
    for impl in ("xla_chunked", "pallas_triton")
  }
  targets = {row["target"] for row in checks}
  assert targets == {
    "block_sparse_attention",
    "mra_attention (MRA-2)",
    "mra_attention (causal MRA-2)",
  }
  for row in by_impl[_WRONG]:
    assert row["status"] == "MISMATCH", row
    assert row["errors"]["out"] > row["tolerance"]
  for row in by_impl["pallas_triton"]:
    assert row["status"] == "ok", row
    if row["dtype"] == "float32" and row["dots"] == "full":
      # Exact float32 and the three-pass splits (bf16x3, tf32x3) are about 1e-5 off at most.
      assert row["max_error"] < 5e-5, row
  assert report[0]["mismatches"] == len(by_impl[_WRONG]) == 3
  assert report[0]["check_errors"] == 0
  op_row = next(row for row in checks if row["target"] == "block_sparse_attention")
  assert set(op_row["errors"]) == {"out", "lse", "dq", "dk", "dv", "dl0", "dacc0"}


def test_speed_rows_compare_mra_with_dense_and_say_why_one_is_missing(report):
  speed = report[0]["speed"]
  cells = {(row["method"], row["pass"]): row for row in speed}
  methods = ("dense cudnn", "dense xla", "MRA-2", "MRA-2-s")
  passes = ("fwd", "fwd+bwd", "causal fwd", "causal fwd+bwd")
  decode = {("dense xla", "decode"), ("MRA-2", "decode"), ("MRA-2-s", "decode")}
  assert set(cells) == {(m, p) for m in methods for p in passes} | decode
  for p in passes:
    assert cells["dense cudnn", p]["status"] == "skipped"
    assert "GPU" in cells["dense cudnn", p]["error"]
    for mra in ("MRA-2", "MRA-2-s"):
      row = cells[mra, p]
      assert row["status"] == "ok"
      assert row["seconds"] > 0 and row["speedup_vs_xla"] > 0 and row["hi_res_tflops"] > 0
      # The quick plan's budget: block_per_row=2 tiles per query block row, L / 32 rows;
      # causal rows compute their diagonal and one past tile each (row 0: the diagonal).
      rows = row["L"] // 32
      assert row["tiles_per_head"] == (2 * rows - 1 if p.startswith("causal") else 2 * rows)
      expected = cells["dense xla", p]["seconds"] / row["seconds"]
      assert row["speedup_vs_xla"] == pytest.approx(expected)
  for mra in ("MRA-2", "MRA-2-s"):
    row = cells[mra, "decode"]
    assert row["status"] == "ok" and row["speedup_vs_xla"] == pytest.approx(
      cells["dense xla", "decode"]["seconds"] / row["seconds"]
    )


def test_markdown_holds_provenance_and_both_tables(report):
  data, text = report
  assert data["complete"] and "INCOMPLETE" not in text
  assert "(3 mismatches, 0 errors)" in text
  assert data["environment"]["commit"] in text
  assert re.search(
    r"\| MISMATCH \| block_sparse_attention \| xla_chunked \| float32 \| 32 \|", text
  )
  assert re.search(r"\| ok \| mra_attention \(MRA-2\) \| pallas_triton \| float32 \| 32 \|", text)
  assert "| 1×2×256×16 | bfloat16 | MRA-2 | xla_chunked | fwd+bwd |" in text
  assert "skipped: cuDNN needs a GPU" in text


def test_without_gpu_or_quick_it_refuses(tmp_path, capsys):
  assert device_check.main([f"--out={tmp_path}"]) == 2
  assert "no GPU here" in capsys.readouterr().err
  assert not list(tmp_path.iterdir())


def test_a_missing_package_names_the_wheels_and_the_install_line(tmp_path, capsys, monkeypatch):
  missing = ModuleNotFoundError("No module named 'flax'", name="flax")
  monkeypatch.setattr(device_check, "_IMPORT_ERROR", missing)
  assert device_check.main(["--quick", f"--out={tmp_path}"]) == 2
  err = capsys.readouterr().err
  assert "'flax'" in err and ".whl/" in err and "pip install" in err and "docs/gpu.md" in err


def test_a_copy_without_git_reads_the_stamp(tmp_path, monkeypatch):
  (tmp_path / ".whl").mkdir()
  written = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
  (tmp_path / ".whl" / source_stamp.STAMP_NAME).write_text(
    source_stamp.format_stamp("a" * 40, True, written)
  )
  monkeypatch.setattr(device_check, "REPO_ROOT", tmp_path)
  state = device_check.source_state()
  assert (state["commit"], state["dirty"]) == ("a" * 40, True)
  assert state["commit_source"] == ".whl/source_stamp.txt written 2026-01-02T03:04:05Z"
