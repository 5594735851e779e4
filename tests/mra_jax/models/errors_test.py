"""Bad snapshots and configs: one clear error each, naming the file and the key."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mra_jax import models
from tests.mra_jax.models import tiny


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
  folder = tmp_path_factory.mktemp("snapshot")
  tiny.write_checkpoint(folder, "MraForMaskedLM")
  return folder


@pytest.fixture
def copy(snapshot, tmp_path):
  folder = tmp_path / "copy"
  shutil.copytree(snapshot, folder)
  return folder


def _edit_config(folder, **changes):
  path = folder / "config.json"
  raw = {**json.loads(path.read_text()), **changes}
  path.write_text(json.dumps({k: v for k, v in raw.items() if v is not None}))


def _edit_weights(folder, edit):
  path = str(folder / "model.safetensors")
  tensors = load_file(path)
  edit(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


def test_a_missing_folder(tmp_path):
  with pytest.raises(models.CheckpointError, match="nowhere: not a folder"):
    models.from_pretrained(tmp_path / "nowhere")


def test_a_folder_without_config_json(copy):
  os.remove(copy / "config.json")
  with pytest.raises(models.CheckpointError, match=r"config\.json: missing"):
    models.from_pretrained(copy)


def test_a_folder_without_weights(copy):
  os.remove(copy / "model.safetensors")
  with pytest.raises(models.CheckpointError, match=r"no weights \(expected model\.safetensors"):
    models.from_pretrained(copy)


def test_a_config_of_another_model_type(copy):
  _edit_config(copy, model_type="bert")
  with pytest.raises(
    models.ConfigError, match=r"config\.json: model_type must be 'mra'; got 'bert'"
  ):
    models.from_pretrained(copy)


def test_a_config_that_is_not_json(copy):
  (copy / "config.json").write_text("{")
  with pytest.raises(models.ConfigError, match=r"config\.json: not valid JSON"):
    models.from_pretrained(copy)


def test_a_config_value_out_of_range(copy):
  _edit_config(copy, num_attention_heads=3)
  with pytest.raises(models.ConfigError, match=r"config\.json: hidden_size must be divisible"):
    models.from_pretrained(copy)


def test_an_unknown_architectures_entry(copy):
  _edit_config(copy, architectures=["MraForCausalLM"])
  with pytest.raises(
    models.CheckpointError, match=r"config\.json: architectures names 'MraForCausalLM'; known:"
  ):
    models.from_pretrained(copy)
  with pytest.raises(models.CheckpointError, match="architecture names 'Bert'"):
    models.from_pretrained(copy, architecture="Bert")


def test_weights_whose_shapes_do_not_match_the_config(copy):
  _edit_config(copy, intermediate_size=40)
  with pytest.raises(
    models.WeightsError,
    match=r"model\.safetensors: 'mra\.encoder\.layer\.0\.intermediate\.dense\.bias' has shape "
    r"\(37,\), but config\.json implies \(40,\)",
  ):
    models.from_pretrained(copy)


def test_a_missing_tensor(copy):
  _edit_weights(copy, lambda t: t.pop("mra.encoder.layer.1.output.dense.bias"))
  with pytest.raises(
    models.WeightsError, match=r"no tensor 'mra\.encoder\.layer\.1\.output\.dense\.bias'"
  ):
    models.from_pretrained(copy)


def test_more_layers_than_the_config_says(copy):
  _edit_config(copy, num_hidden_layers=1)
  with pytest.raises(
    models.WeightsError, match=r"tensor 'mra\.encoder\.layer\.1\.[\w.]+' has no place"
  ):
    models.from_pretrained(copy)


def test_a_damaged_weights_file(copy):
  (copy / "model.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(models.CheckpointError, match=r"model\.safetensors: not a readable"):
    models.from_pretrained(copy)


def test_a_torch_checkpoint_without_torch_names_the_extra(copy, monkeypatch):
  os.remove(copy / "model.safetensors")
  (copy / "pytorch_model.bin").write_bytes(b"")
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch now fails
  with pytest.raises(
    ImportError, match=r"pytorch_model\.bin needs torch: pip install 'mra_jax\[torch\]'"
  ):
    models.from_pretrained(copy)


def test_safetensors_without_the_package_names_the_extra(copy, monkeypatch):
  monkeypatch.setitem(sys.modules, "safetensors", None)
  with pytest.raises(
    ImportError, match=r"needs the safetensors package: pip install 'mra_jax\[models\]'"
  ):
    models.from_pretrained(copy)


def test_bad_runtime_options(snapshot):
  with pytest.raises(ValueError, match="mask_layout must be one of"):
    models.from_pretrained(snapshot, mask_layout="batch")
  with pytest.raises(ValueError, match="impl must be one of"):
    models.from_pretrained(snapshot, impl="cuda")


def test_inputs_longer_than_the_position_table(snapshot):
  model = models.from_pretrained(snapshot)
  with pytest.raises(ValueError, match=r"length 129 > max_position_embeddings=128"):
    model(np.zeros((1, 129), np.int32))


def test_a_mask_of_another_shape(snapshot):
  model = models.from_pretrained(snapshot)
  with pytest.raises(ValueError, match=r"attention_mask must have input_ids' shape"):
    model(np.zeros((1, 32), np.int32), np.ones((1, 31), np.int32))
