"""The LM task through the harness: bits per byte, best by lowest validation bits per byte,
resume exact, the test at a longer length, the smoke config."""

import json
import os

import jax
import numpy as np
import pytest

from lra import reporting, run_config, train
from lra.data import prepare_lib, tasks

from . import lm_testing, train_test  # pylint: disable=relative-beyond-top-level


def _train(config, workdir) -> dict:
  return train.train_and_evaluate(run_config.from_config_dict(config), str(workdir))


def test_bits_per_byte_are_reported_and_the_best_is_the_lowest(lm_run):
  workdir, results = lm_run
  assert results["test_bits_per_byte"] == pytest.approx(results["test_loss"] / np.log(2))
  validations = [e for e in reporting.read_metrics(str(workdir)) if e["split"] == "validation"]
  assert [e["step"] for e in validations] == [2, 4, 6]
  assert [e["split"] for e in reporting.read_metrics(str(workdir))][-2:] == [
    "test",
    "test_length_64",
  ]
  best = min(validations, key=lambda e: e["bits_per_byte"])
  assert results["best_step"] == best["step"]
  assert results["best_validation_bits_per_byte"] == best["bits_per_byte"]
  data = results["provenance"]["data"]["source"]
  assert data["corpus"] == "folder" and data["window"] == 32 and len(data["fingerprint"]) == 64
  # The same test bytes at the trained length and at 64, from windows made from one corpus.
  at = results["test_at_lengths"]
  assert at["32"]["trained_length"] and at["32"]["bits_per_byte"] == results["test_bits_per_byte"]
  assert at["64"]["num_bytes"] == at["32"]["num_bytes"] == results["num_test_bytes"]
  spec64 = tasks.get_task("lm").for_length(64)
  made_from = prepare_lib.source_record(spec64, results["config"]["data_dir"])
  assert made_from["fingerprint"] == data["fingerprint"] and made_from["window"] == 64
  line = reporting.result_line(results, str(workdir))
  assert "bits per byte" in line and "at length 64:" in line
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["test_bits_per_byte"] == results["test_bits_per_byte"]


class _Crash(Exception):
  pass


def _events(workdir):
  """metrics.jsonl without the timings."""
  return [
    {k: v for k, v in e.items() if k != "steps_per_sec"} for e in reporting.read_metrics(workdir)
  ]


def test_resume_after_crash_is_bit_identical(lm_data, lm_run, tmp_path, monkeypatch):
  """A run killed after step 5 and rerun ends as `lm_run`, which was never stopped."""
  straight, expected = lm_run
  original = reporting.MetricsWriter.write

  def write_then_crash(self, step, split, **values):
    original(self, step, split, **values)
    if step == 5 and split == "train":  # After checkpoint 3 and the validation at 4.
      raise _Crash()

  monkeypatch.setattr(reporting.MetricsWriter, "write", write_then_crash)
  crashed = str(tmp_path / "crashed")
  with pytest.raises(_Crash):
    _train(lm_testing.run_config_of(lm_data), crashed)
  monkeypatch.setattr(reporting.MetricsWriter, "write", original)
  resumed = _train(lm_testing.run_config_of(lm_data), crashed)
  step_a, params_a = train_test._final_params(str(straight))  # pylint: disable=protected-access
  step_b, params_b = train_test._final_params(crashed)  # pylint: disable=protected-access
  assert step_a == step_b == 6
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params_a, params_b)
  assert _events(str(straight)) == _events(crashed)
  for key in (
    "test_bits_per_byte",
    "test_at_lengths",
    "best_step",
    "best_validation_bits_per_byte",
  ):
    assert expected[key] == resumed[key]


@pytest.mark.parametrize(
  "attention",
  # MRA-2 in the fast tier; the other two in the slow one.
  [a if a == "mra2" else pytest.param(a, marks=pytest.mark.slow) for a in lm_testing.CAUSAL],
)
def test_the_smoke_config_trains(attention, tmp_path):
  """`configs/lm.py:smoke` as CI runs it: its data prepared from the standard library."""
  from configs import lm  # pylint: disable=g-import-not-at-top

  results = _train(lm.get_config(f"smoke,attention={attention}"), tmp_path)
  assert 0 < results["test_bits_per_byte"] < 8.5 and results["num_test_bytes"] == 16 * 1024 - 1
  assert set(results["test_at_lengths"]) == {"256", "512"}
  source = results["provenance"]["data"]["source"]
  assert source["corpus"] == "python-stdlib" and source["python"]
