"""The published checkpoints against transformers' integration-test numbers (atol 1e-4).

Runs when `MRA_CHECKPOINTS` names a folder holding local snapshots of the two published
checkpoints, skips otherwise (they cannot be fetched here):

  $MRA_CHECKPOINTS/mra-base-512-4/       config.json + pytorch_model.bin or model.safetensors
  $MRA_CHECKPOINTS/mra-base-4096-8-d3/   the same

  MRA_CHECKPOINTS=/path pytest tests/mra_jax/models/checkpoints_test.py -m "slow or not slow"

The expected slices are those of transformers' tests/models/mra/test_modeling_mra.py
(`MraModelIntegrationTest`), computed there with the authors' CUDA kernel.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from mra_jax import models

ENV = "MRA_CHECKPOINTS"
ATOL = 1e-4


def _snapshot(name: str) -> str:
  root = os.environ.get(ENV)
  if not root:
    pytest.skip(f"set {ENV} to a folder with {name}/ to check the published numbers")
  folder = os.path.join(root, name)
  if not os.path.isdir(folder):
    pytest.fail(f"{ENV}={root} has no {name}/ folder")
  return folder


def test_mra_base_512_4_hidden_states():
  model = models.from_pretrained(_snapshot("mra-base-512-4"), architecture="MraModel")
  out = model(jnp.arange(256)[None, :]).last_hidden_state
  assert out.shape == (1, 256, 768)
  expected = [[-0.0140, 0.0830, -0.0381], [0.1546, 0.1402, 0.0220], [0.1162, 0.0851, 0.0165]]
  np.testing.assert_allclose(out[0, :3, :3], expected, atol=ATOL)


def test_mra_base_512_4_masked_lm_logits():
  model = models.from_pretrained(_snapshot("mra-base-512-4"))
  assert type(model).__name__ == "MraForMaskedLM"
  out = model(jnp.arange(256)[None, :]).logits
  assert out.shape == (1, 256, 50265)
  expected = [[9.2595, -3.6038, 11.8819], [9.3869, -3.2693, 11.0956], [11.8524, -3.4938, 13.1210]]
  np.testing.assert_allclose(out[0, :3, :3], expected, atol=ATOL)


@pytest.mark.slow
def test_mra_base_4096_8_d3_masked_lm_logits():
  model = models.from_pretrained(_snapshot("mra-base-4096-8-d3"))
  hidden = model.mra(jnp.arange(4096)[None, :]).last_hidden_state
  # Only the first tokens' logits: the whole [4096, 50265] float32 block would take 800 MB.
  logits = model.cls.predictions(hidden[:, :3], model.mra.embeddings.word_embeddings)
  expected = [[5.4789, -2.3564, 7.5064], [7.9067, -1.3369, 9.9668], [9.0712, -1.8106, 7.0380]]
  np.testing.assert_allclose(logits[0, :3, :3], expected, atol=ATOL)
