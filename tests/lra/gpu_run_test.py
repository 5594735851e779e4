"""lra.gpu_run: the one-command ListOps run, in its tiny variant, and its config."""

import json
import os

import pytest

from configs import listops as listops_config
from lra import checkpoints, gpu_run, run_config


def test_the_full_run_is_the_papers_protocol():
  run = gpu_run.listops_run("softmax", "/data")
  expected = listops_config.get_config("attention=softmax")
  expected.data_dir, expected.plot = "/data", False
  assert run == run_config.from_config_dict(expected)
  assert run.num_train_steps == 5000 and run.max_length == 2048
  assert gpu_run.listops_run("mra2", "/data", steps=2500).num_train_steps == 2500


@pytest.mark.slow  # two runs end to end
def test_tiny_run_generates_trains_both_and_summarises(tmp_path):
  summary = gpu_run.run(str(tmp_path), ["mra2", "softmax"], tiny=True, workers=2)
  assert sorted(summary["runs"]) == ["mra2", "softmax"]
  with open(tmp_path / "summary.json") as f:
    assert json.load(f) == summary
  for name, run in summary["runs"].items():
    with open(run["results"]) as f:
      results = json.load(f)
    assert results["attention"] == name and results["num_test_examples"] == 32
    assert results["test_accuracy"] == run["test_accuracy"]
    assert run["steps_this_session"] == 6 and run["steps_per_sec"] > 0
    assert results["provenance"]["data"]["generated"] is None  # prepared, not run-generated
    assert len(results["provenance"]["data"]["split_sha256"]) == 3
    with open(os.path.join(tmp_path, name, checkpoints.CONFIG_FILE)) as f:
      assert json.load(f)["max_length"] == gpu_run.TINY_MAX_TOKENS
  fingerprints = set()
  for run in summary["runs"].values():
    with open(run["results"]) as f:
      fingerprints.add(json.load(f)["provenance"]["data"]["fingerprint"])
  assert len(fingerprints) == 1  # both trained on the same data
  # Rerunning finds the data and the finished runs: nothing is trained again.
  again = gpu_run.run(str(tmp_path), ["softmax"], tiny=True)
  assert again["runs"]["softmax"]["steps_this_session"] == 0
  assert again["runs"]["softmax"]["test_accuracy"] == summary["runs"]["softmax"]["test_accuracy"]


def test_bad_arguments_are_refused_before_any_work(tmp_path):
  with pytest.raises(ValueError, match="steps=-1"):
    gpu_run.run(str(tmp_path), ["softmax"], steps=-1)
  with pytest.raises(ValueError, match="attentions"):
    gpu_run.run(str(tmp_path), [])
  assert not os.listdir(tmp_path)
