"""Golden numbers of two training steps: a changed label, pooling, init, loss, optimizer or
step order changes them, even when every other test still passes.

The run is the tiny config of `train_test` on the session's tiny Text data (fixed reviews of
15 to 50 bytes, so the 64-token rows end in padding and the mask matters), in float32 on the four simulated CPU devices, with XLA's optimisations off
(they change the round-off). If a change is meant to alter training, rerun
`pytest -q -n 0 tests/lra/golden_test.py`, check that the new numbers are what the change
should give, and paste the printed dict over `GOLDEN` below.
"""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lra import reporting

from . import train_test  # pylint: disable=relative-beyond-top-level

# Losses of steps 1 and 2; sum |x| over all parameters after step 2; a few single leaves.
GOLDEN = {
  "loss_step_1": 0.7500060796737671,
  "loss_step_2": 0.6873894929885864,
  "sum_abs_params": 575.8549557045219,
  "sum_embedding": -0.2799573018864976,
  "sum_query_kernel": -1.8531524750287645,
  "head_out_bias": [-0.00035742466570809484, 0.00035742492764256895],
}
# Process-wide JAX settings the numbers depend on; other tests in the same worker may have
# changed them (pytest -n runs any test after any other).
_SETTINGS = {
  "jax_disable_most_optimizations": True,
  "jax_enable_x64": False,
  "jax_default_matmul_precision": None,
}


def _read(name: str):
  # Settings that have a context manager are read as attributes, the others with `read`.
  return getattr(jax.config, name) if hasattr(jax.config, name) else jax.config.read(name)


@pytest.fixture(autouse=True)
def _fixed_jax_settings():
  previous = {name: _read(name) for name in _SETTINGS}
  for name, value in _SETTINGS.items():
    jax.config.update(name, value)
  yield
  for name, value in previous.items():
    jax.config.update(name, value)


def _numbers(workdir: str) -> dict:
  losses = [e["loss"] for e in reporting.read_metrics(workdir) if e["split"] == "train"]
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "meta"))
  state = mngr.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  mngr.close()
  params = jax.tree.map(lambda x: np.asarray(x, np.float64), state["params"])

  def leaf(*path):  # A parameter by its module path (the array under any `value` wrapper).
    node = params
    for key in path:
      node = node[key]
    (array,) = jax.tree.leaves(node)
    return array

  return {
    "loss_step_1": losses[0],
    "loss_step_2": losses[1],
    "sum_abs_params": float(sum(np.abs(x).sum() for x in jax.tree.leaves(params))),
    "sum_embedding": float(leaf("encoder", "embed", "embedding").sum()),
    "sum_query_kernel": float(leaf("encoder", "blocks", "0", "attention", "query", "kernel").sum()),
    "head_out_bias": [float(x) for x in leaf("head", "out", "bias")],
  }


def test_two_training_steps_match_the_golden_numbers(prepared, tmp_path):
  config = train_test.tiny_config(
    "text",
    prepared("text"),
    num_train_steps=2,
    eval_every_steps=2,
    checkpoint_every_steps=2,
    compute_dtype="float32",
    seed=0,
  )
  config.model.dropout_rate = 0.1  # Dropout keys are part of what is pinned.
  train_test._train(config, str(tmp_path))  # pylint: disable=protected-access
  actual = _numbers(str(tmp_path))
  mismatched = []
  for key, want in GOLDEN.items():
    got = actual[key]
    if not np.allclose(got, want, rtol=1e-6, atol=0.0):
      mismatched.append(f"{key}: golden {want}, now {got}")
  assert GOLDEN and not mismatched, (
    "Two training steps no longer give the golden numbers:\n  "
    + "\n  ".join(mismatched or ["(GOLDEN is empty)"])
    + "\nIf the change is meant to alter training, replace GOLDEN in "
    "tests/lra/golden_test.py with:\n" + json.dumps(actual, indent=2)
  )
