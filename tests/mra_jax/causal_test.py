"""Causal MRA's contract: the output at i depends on inputs at positions <= i only.

Exactly: changing anything after i (queries, keys, values, the padding mask) leaves every
output up to i bit-identical, and d out_i / d x_j is exactly 0 for j > i; with a budget that
covers every past tile it is causal softmax attention.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mra_jax
from mra_jax import causal

VARIANTS = list(itertools.product(causal.SELECTIONS, causal.LOW_RESOLUTIONS))
# The fast tier runs the default variant and its opposite in both knobs; the slow tier all.
FAST = {("previous_block", "per_query"), ("first_query", "per_block")}


def _tiered(*combos, fast):
  """pytest params of `combos`, those not in `fast` marked slow."""
  return [c if c in fast else pytest.param(*c, marks=pytest.mark.slow) for c in combos]


IMPLS = ("reference", "xla_chunked")
# Length 100: not a block multiple; blocks of 16 give 7 rows, 3 tiles each (2 past + diag).
KNOBS = dict(is_causal=True, block_size=16, block_per_row=3, initial_prior_first_n_blocks=1)


def _inputs(B=2, L=100, H=2, Hk=2, D=8, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(keys[0], (B, L, H, D)).astype(dtype)
  k = jax.random.normal(keys[1], (B, L, Hk, D)).astype(dtype)
  v = jax.random.normal(keys[2], (B, L, Hk, D)).astype(dtype)
  mask = jnp.arange(L)[None, :] < jnp.array([L, 71])[:B, None]
  return q, k, v, mask


def _perturb_after(t, q, k, v, mask, seed=7):
  """Every input at positions > t replaced (values redrawn, the padding flipped)."""
  after = jnp.arange(q.shape[1]) > t
  noise = lambda x, s: jnp.where(
    after[None, :, None, None], jax.random.normal(jax.random.key(s), x.shape).astype(x.dtype), x
  )
  return noise(q, seed), noise(k, seed + 1), noise(v, seed + 2), jnp.where(after, ~mask, mask)


@pytest.mark.parametrize(
  "selection,low_resolution,impl,approx_mode",
  _tiered(
    *itertools.product(causal.SELECTIONS, causal.LOW_RESOLUTIONS, IMPLS, ("full", "sparse")),
    fast={
      (*variant, impl, mode)
      for variant in FAST
      for impl in IMPLS
      for mode in ("full", "sparse")
      if variant == ("previous_block", "per_query") or (impl, mode) == ("xla_chunked", "full")
    },
  ),
)
def test_changing_the_future_changes_nothing_up_to_now(
  selection, low_resolution, impl, approx_mode
):
  knobs = dict(
    KNOBS,
    causal_selection=selection,
    causal_low_resolution=low_resolution,
    impl=impl,
    approx_mode=approx_mode,
  )
  attend = jax.jit(lambda *a: mra_jax.mra_attention(*a, **knobs))
  args = _inputs()
  out = np.asarray(attend(*args))
  for t in (0, 15, 16, 40, 63):  # First position, block ends and starts, mid-block.
    other = np.asarray(attend(*_perturb_after(t, *args)))
    np.testing.assert_array_equal(other[:, : t + 1], out[:, : t + 1], err_msg=f"t={t}")
    assert not np.array_equal(other[0, t + 1 :], out[0, t + 1 :])  # The future did change.


@pytest.mark.parametrize("selection,low_resolution", _tiered(*VARIANTS, fast=FAST))
def test_no_gradient_flows_from_the_future(selection, low_resolution):
  knobs = dict(KNOBS, causal_selection=selection, causal_low_resolution=low_resolution)
  q, k, v, mask = _inputs(B=1)
  cotangent = jax.random.normal(jax.random.key(3), q.shape)

  @jax.jit
  def grads_of_position(i):
    weight = (jnp.arange(q.shape[1]) == i)[None, :, None, None] * cotangent
    loss = lambda q, k, v: jnp.sum(mra_jax.mra_attention(q, k, v, mask, **knobs) * weight)
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  for i in (5, 16, 33, 47, 80):
    for name, g in zip("qkv", grads_of_position(i)):
      g = np.asarray(g)
      np.testing.assert_array_equal(g[:, i + 1 :], 0.0, err_msg=f"d out_{i} / d {name}_j, j > {i}")
      assert np.abs(g[:, : i + 1]).max() > 0, (name, i)


_BUDGETS = {"block_per_row": dict(block_per_row=7), "num_blocks": dict(num_blocks=49)}
_FAST_BUDGETS = {
  ("full", "block_per_row", "mha"),
  ("full", "num_blocks", "gqa"),
  ("sparse", "block_per_row", "gqa"),
}


@pytest.mark.parametrize(
  "approx_mode,budget_name,heads",
  _tiered(*itertools.product(("full", "sparse"), _BUDGETS, ("mha", "gqa")), fast=_FAST_BUDGETS),
)
def test_a_budget_over_every_past_tile_is_causal_softmax(approx_mode, budget_name, heads):
  budget = _BUDGETS[budget_name]
  H, Hk = {"mha": (2, 2), "gqa": (4, 2)}[heads]
  q, k, v, mask = _inputs(H=H, Hk=Hk)
  got = jax.jit(
    lambda *a: mra_jax.mra_attention(
      *a, is_causal=True, block_size=16, approx_mode=approx_mode, impl="xla_chunked", **budget
    )
  )(q, k, v, mask)
  want = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :], is_causal=True)
  want = jnp.where(mask[:, :, None, None], want, 0.0)
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, pytest.param(jnp.float16, marks=pytest.mark.slow)])
def test_half_precision_stays_causal_and_close_to_float32(dtype):
  args = _inputs(dtype=dtype)
  attend = jax.jit(lambda *a: mra_jax.mra_attention(*a, **KNOBS))
  out = attend(*args)
  assert out.dtype == dtype
  other = attend(*_perturb_after(40, *args))
  np.testing.assert_array_equal(np.asarray(other[:, :41]), np.asarray(out[:, :41]))
  f32 = attend(*(x.astype(jnp.float32) if x.dtype == dtype else x for x in args))
  np.testing.assert_allclose(np.asarray(out, np.float32), f32, atol=3e-2)


@pytest.mark.parametrize(
  "block_size",
  [pytest.param(16, marks=pytest.mark.slow), 32, pytest.param(64, marks=pytest.mark.slow), 128],
)
def test_every_block_size_is_causal(block_size):
  args = _inputs(L=300, B=1)
  knobs = dict(is_causal=True, block_size=block_size, block_per_row=2)
  attend = jax.jit(lambda *a: mra_jax.mra_attention(*a, **knobs))
  out = np.asarray(attend(*args))
  other = np.asarray(attend(*_perturb_after(150, *args)))
  np.testing.assert_array_equal(other[:, :151], out[:, :151])


def test_each_row_computes_its_diagonal_and_its_best_past_tiles():
  """Tile selection per row: the diagonal, then the best past blocks by the previous
  block's mean query (here made to prefer block 2 for every row after it)."""
  B, L, H, D, bs = 1, 96, 1, 4, 16
  q = jnp.ones((B, L, H, D))
  q_valid = jnp.ones((B, L), bool)
  summaries = causal.query_summaries(jnp.swapaxes(q, 1, 2), q_valid, bs, "previous_block")
  k_hat = jnp.zeros((B, H, L // bs, D)).at[:, :, 2].set(1.0)  # key block 2 stands out
  counts = jnp.full((B, L // bs), float(bs))
  scores = causal.selection_scores(
    causal.grouped_logits(summaries, k_hat, 0.5),
    counts,
    prior_first_n_blocks=0,
    prior_diagonal_n_blocks=0,
  )
  ids, selected = causal.select_tiles(scores, per_row=2)
  rows = [sorted(int(t) % 6 for t in np.asarray(ids[0, 0]) if int(t) // 6 == r) for r in range(6)]
  assert rows == [[0], [0, 1], [0, 2], [2, 3], [2, 4], [2, 5]]  # row 2: a tie, lowest first
  assert np.asarray(selected).sum() == len(np.asarray(ids[0, 0]))


def test_bad_causal_input_is_named():
  q, k, v, mask = _inputs()
  with pytest.raises(ValueError, match="is_causal=True needs as many queries as keys"):
    mra_jax.mra_attention(q[:, :50], k, v, mask[:, :50], is_causal=True)
  with pytest.raises(ValueError, match="causal_selection='middle_query'"):
    mra_jax.MraConfig(is_causal=True, causal_selection="middle_query")
  with pytest.raises(ValueError, match="causal_low_resolution"):
    mra_jax.MraConfig(causal_low_resolution="per_token")
  with pytest.raises(ValueError, match="key must match query"):
    mra_jax.mra_attention(q, k[:, :, :1].repeat(3, axis=2), v, mask)
