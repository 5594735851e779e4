"""Smoke and unit tests for `benchmarks.approximation` (tiny settings, not timed)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import approximation


@pytest.mark.slow  # a whole sweep
def test_runs_on_npz_with_mask_and_writes_json_and_plots(tmp_path):
  q, k, v = approximation.synthetic_qkv(1, 64, 2, 16, seed=1)
  mask = np.ones((1, 64), bool)
  mask[:, 50:] = False
  np.savez(tmp_path / "qkv.npz", q=q, k=k, v=v, mask=mask)
  approximation.main(
    [
      f"--qkv={tmp_path / 'qkv.npz'}",
      "--methods=softmax,mra2",
      "--repeats=1",
      "--quick",
      f"--out={tmp_path / 'out'}",
    ]
  )
  report = json.loads((tmp_path / "out" / "approximation.json").read_text())
  assert report["setting"]["masked"] and report["setting"]["length"] == 64
  labels = [r["label"] for r in report["budgets"]]
  assert labels == ["mra2[block_per_row=1]"]  # Budgets capped at L/64 blocks per row.
  for r in report["budgets"]:
    assert 0.0 <= r["relative_error"] < 2.0 and r["time_ratio_vs_softmax"] > 0
  (chosen,) = report["entropy_methods"]
  ent = [r for r in report["entropy"] if r["label"] == chosen]
  assert [r["scale"] for r in ent] == list(approximation._QUICK_SCALES)
  # Sharper logits, lower entropy: softmax entropy falls monotonically with the scale.
  entropies = [r["entropy"] for r in ent]
  assert entropies == sorted(entropies, reverse=True) and entropies[0] < np.log(50) + 1e-4
  for png in ("approximation_runtime.png", "approximation_entropy.png"):
    assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "out" / png).unlink()
  approximation.main(["--plot_only", f"--out={tmp_path / 'out'}"])
  for png in ("approximation_runtime.png", "approximation_entropy.png"):
    assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"


def test_relative_errors_ignore_padded_queries():
  y = jnp.ones((1, 4, 2, 3))
  yhat = y.at[:, 3].set(100.0).at[:, 0, 1].set(2.0)
  mask = jnp.array([[True, True, True, False]])
  err = approximation.relative_errors(y, yhat, mask)
  # Head 1: one of three real rows off by 1 in each of 3 entries -> sqrt(3) / sqrt(9).
  np.testing.assert_allclose(err, [[0.0, np.sqrt(3 / 9)]], rtol=1e-6)


def test_synthetic_inputs_are_locally_correlated():
  q, k, v = approximation.synthetic_qkv(2, 256, 2, 32)
  assert q.shape == k.shape == v.shape == (2, 256, 2, 32) and q.dtype == np.float32
  dots = np.einsum("blhd,bmhd->bhlm", q, k) / np.sqrt(32)
  near = np.mean(np.diagonal(dots, axis1=2, axis2=3))
  far = np.mean(np.diagonal(dots, offset=128, axis1=2, axis2=3))
  assert near > 4.0 and abs(far) < 1.0


def test_load_qkv_names_bad_inputs(tmp_path):
  good = np.zeros((1, 8, 2, 4), np.float32)
  np.savez(tmp_path / "missing.npz", q=good, k=good)
  with pytest.raises(ValueError, match=r"\['v'\]"):
    approximation.load_qkv(str(tmp_path / "missing.npz"))
  np.savez(tmp_path / "shape.npz", q=good, k=good, v=good[:, :4])
  with pytest.raises(ValueError, match="v.shape"):
    approximation.load_qkv(str(tmp_path / "shape.npz"))
  np.savez(tmp_path / "mask.npz", q=good, k=good, v=good, mask=np.ones((1, 7)))
  with pytest.raises(ValueError, match="mask.shape"):
    approximation.load_qkv(str(tmp_path / "mask.npz"))
