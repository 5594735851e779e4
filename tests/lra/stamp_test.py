"""The workdir stamp: a key added to the code after a workdir was made still resumes it."""

import json

import pytest

from configs import listops
from lra import checkpoints, run_config


def _stamp(tmp_path, config) -> dict:
  checkpoints.store_config(str(tmp_path), run_config.from_config_dict(config))
  with open(tmp_path / checkpoints.CONFIG_FILE) as f:
    return json.load(f)


def _store(tmp_path, stamp: dict) -> None:
  with open(tmp_path / checkpoints.CONFIG_FILE, "w") as f:
    json.dump(stamp, f)


def test_a_key_missing_from_an_older_stamp_matches_its_default(tmp_path):
  config = listops.get_config("smoke,attention=softmax")
  stamp = _stamp(tmp_path, config)
  # As written before softmax had a knob and before the model had these keys.
  del stamp["attention_kwargs"]["is_causal"]
  del stamp["model"]["positions"]
  _store(tmp_path, stamp)
  checkpoints.check_config(str(tmp_path), run_config.from_config_dict(config))
  # The same key at another value is a different computation.
  config.attention_kwargs.is_causal = True
  with pytest.raises(checkpoints.ConfigMismatchError, match="is_causal: stored '<absent>'"):
    checkpoints.check_config(str(tmp_path), run_config.from_config_dict(config))


def test_a_key_without_a_default_is_never_assumed(tmp_path):
  config = listops.get_config("smoke")
  stamp = _stamp(tmp_path, config)
  del stamp["max_length"]
  _store(tmp_path, stamp)
  with pytest.raises(checkpoints.ConfigMismatchError, match="max_length: stored '<absent>'"):
    checkpoints.check_config(str(tmp_path), run_config.from_config_dict(config))
