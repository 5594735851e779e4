"""Parity with the published MRA code on stored inputs, outputs and gradients.

The data and its provenance are described in `testdata/README.md` beside this file.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mra_jax

_GOLDEN = os.path.join(os.path.dirname(__file__), "testdata", "mra_published_golden.npz")

# The stored cases (testdata/README.md, "Cases").
_CASES = {
  "full_nomask_nb16": dict(masked=False, num_blocks=16, approx_mode="full"),
  "sparse_nomask_nb16": dict(masked=False, num_blocks=16, approx_mode="sparse"),
  "full_mask_nb32": dict(masked=True, num_blocks=32, approx_mode="full"),
  "sparse_mask_nb32": dict(masked=True, num_blocks=32, approx_mode="sparse"),
  "full_mask_nb32_first1_diag1": dict(
    masked=True,
    num_blocks=32,
    approx_mode="full",
    initial_prior_first_n_blocks=1,
    initial_prior_diagonal_n_blocks=1,
  ),
  "sparse_nomask_nb48_first1_diag3": dict(
    masked=False,
    num_blocks=48,
    approx_mode="sparse",
    initial_prior_first_n_blocks=1,
    initial_prior_diagonal_n_blocks=3,
  ),
  "full_nomask_nb64_all": dict(masked=False, num_blocks=64, approx_mode="full"),
}
# float32 round-off: measured at most 2.5e-7 relative on outputs and 3.4e-7 on gradients.
_RTOL = 1e-6


@pytest.fixture(scope="module", name="golden")
def _golden():
  # The file is part of the repository: its absence is an error, not a skip.
  assert os.path.exists(_GOLDEN), f"golden data not found at {_GOLDEN}"
  return dict(np.load(_GOLDEN))


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("impl", ["xla_chunked", "reference"])
@pytest.mark.parametrize("case", sorted(_CASES))
def test_matches_published_output_and_gradients(golden, case, impl):
  knobs = dict(_CASES[case])
  mask = golden["mask"] if knobs.pop("masked") else None
  run = jax.jit(lambda q, k, v: mra_jax.mra_attention(q, k, v, mask, impl=impl, **knobs))
  q, k, v = golden["query"], golden["key"], golden["value"]
  assert _rel(run(q, k, v), golden[f"{case}/output"]) < _RTOL
  if f"{case}/dquery" in golden:
    _, vjp = jax.vjp(run, q, k, v)
    grads = vjp(jnp.asarray(golden["cotangent"]))
    for name, grad in zip(("dquery", "dkey", "dvalue"), grads):
      assert _rel(grad, golden[f"{case}/{name}"]) < _RTOL, name
