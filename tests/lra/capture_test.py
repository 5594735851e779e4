"""`lra.capture`: a trained run's attention inputs, and the approximation benchmark on them."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import approximation
from lra import capture, checkpoints, inputs, models

from . import train_test  # pylint: disable=relative-beyond-top-level

# The slow tier: a trained run and the approximation benchmark on it (about 90 s).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(prepared, tmp_path_factory):
  """A finished 2-layer ListOps run (4 steps; best-validation and latest checkpoints)."""
  workdir = str(tmp_path_factory.mktemp("capture_run"))
  config = train_test.tiny_config("listops", prepared("listops"), **{"model.num_layers": 2})
  train_test._train(config, workdir)  # pylint: disable=protected-access
  return workdir


def _first_layer_queries(run, workdir, batch):
  """Layer 0's projected queries, recomputed by hand from the restored model."""
  model = models.build(run.model, rngs=nnx.Rngs(0))
  capture.restore_params(run, workdir, model)
  enc = model.encoder
  x = enc.embed(jnp.asarray(batch["inputs"])) + enc.position_LxE[...][None]
  block = enc.blocks[0]
  q = block.attention.query(block.ln_attention(x))
  return np.asarray(q.reshape(*q.shape[:2], block.attention.num_heads, -1))


def test_captures_the_trained_layer_inputs(run_dir):
  out = capture.capture_qkv(run_dir, layer=0, num_examples=3)
  run = checkpoints.load_config(run_dir)
  loader = inputs.make_loader(
    run, inputs.resolve_data_dir(run, run_dir), "test", batch_size=3, train=False
  )
  batch = next(iter(loader))
  assert out["q"].shape == out["k"].shape == out["v"].shape == (3, 64, 2, 8)
  np.testing.assert_array_equal(out["mask"], batch["mask"].astype(bool))
  np.testing.assert_allclose(
    out["q"], _first_layer_queries(run, run_dir, batch), rtol=1e-5, atol=1e-6
  )
  assert out["source"].startswith("listops/softmax layer 0, best step ")
  deeper = capture.capture_qkv(run_dir, layer=1, num_examples=3)
  assert not np.allclose(deeper["q"], out["q"])  # Another layer, other features.


def test_falls_back_to_the_latest_checkpoint(run_dir, tmp_path):
  copy = str(tmp_path / "run")
  shutil.copytree(run_dir, copy)
  shutil.rmtree(os.path.join(copy, "best"))
  out = capture.capture_qkv(copy, layer=0, num_examples=2)
  assert "latest step 4" in out["source"]


def test_bad_arguments_are_named(run_dir, tmp_path):
  with pytest.raises(ValueError, match="layer=2"):
    capture.capture_qkv(run_dir, layer=2)
  with pytest.raises(ValueError, match="num_examples=0"):
    capture.capture_qkv(run_dir, num_examples=0)
  with pytest.raises(FileNotFoundError, match="not a directory written by"):
    capture.capture_qkv(str(tmp_path))


def test_approximation_benchmark_runs_on_a_checkpoint(run_dir, tmp_path):
  out = str(tmp_path / "approx")
  approximation.main(
    [
      "--quick",
      f"--workdir={run_dir}",
      "--layer=1",
      "--batch=2",
      "--methods=softmax,mra2",
      "--repeats=1",
      f"--out={out}",
    ]
  )
  with open(os.path.join(out, "approximation.json")) as f:
    report = json.load(f)
  assert report["setting"]["source"].startswith("checkpoint listops/softmax layer 1")
  assert report["setting"]["length"] == 64 and report["setting"]["heads"] == 2
  errors = [r["relative_error"] for r in report["budgets"] if r["name"] == "mra2"]
  assert errors and all(0.0 <= e < 1.0 for e in errors)
