"""The block-sparse attention contract as one test class that every implementation subclasses.

Not collected itself (no `_test` suffix). A subclass gives the implementation, with the
options it runs under, and may narrow the cases (interpreters are slow):

    class TestPallasTriton(contract.BlockSparseAttentionContract):
      IMPLEMENTATION = pallas_triton.PallasTriton(interpret=True)

Every case runs the forward and the VJP under a random cotangent on (out, lse), in one
jitted program, and compares out, lse, dq, dk, dv, dl0 and dacc0 with `expected`, which is
`block_sparse_attention_reference` unless a subclass says otherwise. Causal cases use
lower-triangular tile patterns (the contract's), with and without the diagonal tiles;
grouped-query cases give k and v fewer heads than q. Two more tests per subclass hold the
causal op to dense causal attention (`jax.nn.dot_product_attention`) with every
lower-triangular tile selected, and check that a query's results do not depend on later
keys.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels.block_sparse_attention import api, base

# Max abs error allowed, relative to the largest reference magnitude of the same array.
# bf16: kernels feed P and dO to the MXU / tensor cores in bf16, the reference stays f32.
TOLERANCE = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}
# Float32 inputs under each of `pallas_triton`'s dot precisions: about 3x the largest error
# measured over the f32 cases (interpret mode emulates each one's rounding), with room for
# tensor cores that truncate TF32 operands instead of rounding them.
F32_PRECISION_TOLERANCE = {
  "float32": 2e-6,  # measured 5.2e-7
  "tf32x3": 2e-6,  # measured 5.1e-7
  "bf16x3": 4e-5,  # measured 1.3e-5
  "tf32": 3e-3,  # measured 7.8e-4
  "bf16": 2e-2,  # measured 5.0e-3
}


@dataclasses.dataclass(frozen=True)
class Case:
  """One contract case: shapes, tile pattern, initial state, padding and options.

  `rows` picks the tile pattern: "uneven" (row 0 holds every key block, row 1 none, the
  rest a random share: the shape of MRA's global top-k), "one_row" (every tile in row 2),
  "none" (no tile at all), "lower" (the diagonal tiles and a random half of those below:
  a causal pattern), "strictly_lower" (a random half of the tiles below the diagonal, none
  on it: the first row is empty) or "all_lower" (every tile with c <= r). `state` is "mra"
  (an initial state on every other query block, empty elsewhere), "full" (on every query
  block) or "empty" (m0 = -inf). `pad` keys at the end of each batch element are invalid
  (`pad[b]`). `Hk` kv heads (default H) serve the H query heads.
  """

  block_size: int = 32
  dtype: Any = jnp.float32
  B: int = 1
  H: int = 2
  Lq: int = 128
  Lk: int = 128
  D: int = 32
  rows: str = "uneven"
  state: str = "mra"
  pad: tuple[int, ...] = (40,)
  scale: float | None = None
  eps: float = base.DEFAULT_EPS
  causal: bool = False
  Hk: int | None = None

  @property
  def kv_heads(self) -> int:
    return self.H if self.Hk is None else self.Hk


CASES = {
  "f32_bs32_mra_state": Case(),
  "bf16_bs32_mra_state": Case(dtype=jnp.bfloat16),
  "f32_bs64_full_state": Case(block_size=64, Lq=256, Lk=256, state="full", pad=(100,)),
  "bf16_bs64_empty_state": Case(block_size=64, Lq=256, Lk=256, dtype=jnp.bfloat16, state="empty"),
  # Heads share their batch element's key mask; batch elements differ in padding.
  "f32_batch_padding_cross_lengths": Case(B=2, Lk=192, D=48, state="empty", pad=(0, 70)),
  "f32_one_row_scale_eps": Case(rows="one_row", pad=(0,), scale=0.3, eps=1e-3),
  "f32_no_tiles": Case(Lq=64, Lk=64, rows="none", pad=(10,)),
  # Not in the default CASE_NAMES. Small, for slow interpreters: two query blocks, one with
  # every tile, one with none, and a fully padded key block.
  "f32_bs64_two_rows": Case(block_size=64, H=1, pad=(70,)),
  # For implementations that take block 128: the same shape at L=256.
  "bf16_bs128_two_rows": Case(block_size=128, Lq=256, Lk=256, dtype=jnp.bfloat16, pad=(150,)),
  # f32 at block 64, D 128: pallas_triton splits each block between two programs.
  "f32_bs64_d128_two_rows": Case(block_size=64, H=1, D=128, pad=(70,)),
  # Block 64 at D 128 and 64 with four blocks a side, so that key blocks' columns differ:
  # pallas_triton's "tf32x3" splits every block in four at D 128, and at D 64 dK/dV's key
  # blocks in two beside whole-block forward and dQ programs.
  "f32_bs64_d128_four_rows": Case(block_size=64, H=1, Lq=256, Lk=256, D=128),
  "f32_bs64_d64_four_rows": Case(block_size=64, H=1, Lq=256, Lk=256, D=64),
  # Causal: lower-triangular patterns with and without the diagonal tiles, padded keys,
  # initial states, both dtypes, blocks 32 and 64 (and 128 for implementations that take it).
  "f32_bs32_causal_mra_state": Case(causal=True, rows="lower"),
  "bf16_bs32_causal_strictly_lower": Case(
    dtype=jnp.bfloat16, causal=True, rows="strictly_lower", state="full", pad=(0,)
  ),
  "f32_bs64_causal_strictly_lower": Case(
    block_size=64, H=1, Lq=256, Lk=256, causal=True, rows="strictly_lower", pad=(100,)
  ),
  "bf16_bs64_causal_empty_state": Case(
    block_size=64,
    H=1,
    Lq=256,
    Lk=256,
    dtype=jnp.bfloat16,
    causal=True,
    rows="lower",
    state="empty",
    pad=(30,),
  ),
  "bf16_bs128_causal": Case(
    block_size=128, H=1, Lq=256, Lk=256, dtype=jnp.bfloat16, causal=True, rows="lower", pad=(60,)
  ),
  # Grouped-query attention: 4 query heads on 2 kv heads and on 1, bidirectional and causal.
  "f32_gqa_4x2": Case(H=4, Hk=2, pad=(0,)),
  "bf16_gqa_4x1_causal": Case(
    H=4, Hk=1, dtype=jnp.bfloat16, causal=True, rows="lower", state="empty", pad=(20,)
  ),
  "f32_gqa_4x1_bs64_causal": Case(
    block_size=64, H=4, Hk=1, causal=True, rows="strictly_lower", pad=(0,)
  ),
  # Causal at block 64 with programs that hold part of a block (pallas_triton's float32 at
  # D 128: halves; at "tf32x3": quarters), so that the mask starts mid-block.
  "f32_bs64_d128_causal_two_rows": Case(block_size=64, H=1, D=128, causal=True, rows="lower"),
  # Small, for slow interpreters: causal, 2 query heads on 1 kv head, two query blocks.
  "f32_bs64_causal_gqa_two_rows": Case(
    block_size=64, H=2, Hk=1, causal=True, rows="lower", pad=(70,)
  ),
}
_EXTRA_CASE_NAMES = (
  "f32_bs64_two_rows",
  "bf16_bs128_two_rows",
  "f32_bs64_d128_two_rows",
  "f32_bs64_d128_four_rows",
  "f32_bs64_d64_four_rows",
  "bf16_bs128_causal",
  "f32_bs64_d128_causal_two_rows",
  "f32_bs64_causal_gqa_two_rows",
)
# The causal and grouped-query cases, for subclasses that narrow the default list.
CAUSAL_CASE_NAMES = tuple(name for name in CASES if CASES[name].causal)
GQA_CASE_NAMES = tuple(name for name in CASES if CASES[name].Hk is not None)
DEFAULT_CASE_NAMES = tuple(name for name in CASES if name not in _EXTRA_CASE_NAMES)
# One case of each kind for the fast tier of slow implementations (interpreted kernels): the
# MRA state, half precision with an empty state, batch padding with cross lengths, no tile,
# causal, and grouped causal.
INTERPRETER_FAST_CASE_NAMES = (
  "f32_bs32_mra_state",
  "bf16_bs64_empty_state",
  "f32_batch_padding_cross_lengths",
  "f32_no_tiles",
  "f32_bs32_causal_mra_state",
  "bf16_gqa_4x1_causal",
)


def _lower_triangular(rng, Nq, Nk, rows):
  """A causal tile pattern: tiles (r, c) with c < r at random, and the diagonal with "lower"."""
  ids = [
    r * Nk + c for r in range(Nq) for c in range(r) if rows == "all_lower" or rng.random() < 0.5
  ]
  if rows != "strictly_lower":
    ids += [r * Nk + r for r in range(Nq)]
  return np.sort(np.asarray(ids, np.int64))


def tile_ids(rng: np.random.Generator, case: Case) -> jax.Array:
  """Sorted unique flat tile ids `(B, Hk, K)` following `case.rows`."""
  Nq, Nk = case.Lq // case.block_size, case.Lk // case.block_size
  per_head = []
  for _ in range(case.B * case.kv_heads):
    if case.rows == "none":
      ids = np.zeros((0,), np.int64)
    elif case.rows == "one_row":
      ids = 2 * Nk + np.arange(Nk)
    elif case.rows in ("lower", "strictly_lower", "all_lower"):
      ids = _lower_triangular(rng, Nq, Nk, case.rows)
    else:
      others = [t for t in range(2 * Nk, Nq * Nk) if rng.random() < 0.4]
      ids = np.concatenate([np.arange(Nk), np.asarray(others, np.int64)])
    per_head.append(np.sort(ids))
  K = min(len(ids) for ids in per_head)
  # Equal K per head: drop tiles from the end of longer heads (rows stay uneven).
  stacked = np.stack([ids[:K] for ids in per_head]).reshape(case.B, case.kv_heads, K)
  return jnp.asarray(stacked, jnp.int32)


def inputs(case: Case, seed: int = 0):
  """`(args, cotangents)`: the op's 8 arrays and a random cotangent on (out, lse)."""
  rng = np.random.default_rng(seed)
  B, H, Lq, Lk, D, bs = case.B, case.H, case.Lq, case.Lk, case.D, case.block_size
  Hk = case.kv_heads
  normal = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  q, k, v = normal(B, H, Lq, D), normal(B, Hk, Lk, D), normal(B, Hk, Lk, D)
  pad = np.broadcast_to(np.asarray(case.pad), (B,))
  key_valid = jnp.asarray(np.arange(Lk)[None, :] < (Lk - pad)[:, None])
  if case.state == "empty":
    has_state = np.zeros((1, 1, Lq), bool)
  elif case.state == "full":
    has_state = np.ones((1, 1, Lq), bool)
  else:
    has_state = np.arange(Lq)[None, None, :] // bs % 2 == 0
  m0 = jnp.where(has_state, normal(B, H, Lq), -jnp.inf)
  l0 = jnp.where(has_state, jnp.asarray(rng.uniform(0.5, 3.0, (B, H, Lq)), jnp.float32), 0.0)
  acc0 = jnp.where(has_state[..., None], normal(B, H, Lq, D), 0.0)
  args = (
    q.astype(case.dtype),
    k.astype(case.dtype),
    v.astype(case.dtype),
    tile_ids(rng, case),
    key_valid,
    m0,
    l0,
    acc0,
  )
  return args, (normal(B, H, Lq, D), normal(B, H, Lq))


def outputs_and_grads(fn, args, cotangents, **options):
  """`((out, lse), (dq, dk, dv, dl0, dacc0))` of `fn`, in one jitted program."""
  q, k, v, ids, valid, m0, l0, acc0 = args
  f = lambda q, k, v, l0, acc0: fn(q, k, v, ids, valid, m0, l0, acc0, **options)

  @jax.jit
  def run(q, k, v, l0, acc0, cotangents):
    outs, vjp = jax.vjp(f, q, k, v, l0, acc0)
    return outs, vjp(cotangents)

  return run(q, k, v, l0, acc0, cotangents)


def assert_close(actual, expected, dtype, name, tolerance=None):
  """Max abs error within `tolerance` (default `TOLERANCE[dtype]`) of max(1, max |expected|)."""
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  assert np.all(np.isfinite(actual)), f"{name}: non-finite values"
  tolerance = TOLERANCE[dtype] if tolerance is None else tolerance
  atol = tolerance * max(1.0, float(np.max(np.abs(expected))))
  np.testing.assert_allclose(actual, expected, rtol=0, atol=atol, err_msg=name)


class BlockSparseAttentionContract:
  """The cases every implementation passes. Subclasses set the class attributes.

  A subclass that only varies options already covered elsewhere may drop the two causal
  property tests (set them to None) to keep interpreters' time down.

  Attributes:
    IMPLEMENTATION: the implementation (a `base.Implementation` with its options), passed
      to `api.block_sparse_attention`. One that takes a precision holds float32 cases to
      `F32_PRECISION_TOLERANCE` of its precision.
    CASE_NAMES: the keys of `CASES` this subclass runs (block sizes 32 and 64 by default).
    FAST_CASE_NAMES: those of them the fast test tier runs (None: all); the others are
      marked slow (interpreters are slow: the fast tier keeps one case of each kind).
  """

  IMPLEMENTATION: base.Implementation
  CASE_NAMES: tuple[str, ...] = DEFAULT_CASE_NAMES
  FAST_CASE_NAMES: tuple[str, ...] | None = None

  def pytest_generate_tests(self, metafunc):
    # pytest calls a test class's own hook: each subclass parametrizes its own cases.
    if "case_name" in metafunc.fixturenames:
      fast = metafunc.cls.FAST_CASE_NAMES
      metafunc.parametrize(
        "case_name",
        [
          name if fast is None or name in fast else pytest.param(name, marks=pytest.mark.slow)
          for name in metafunc.cls.CASE_NAMES
        ],
      )

  def attend(self, *args, **options):
    return api.block_sparse_attention(*args, implementation=self.IMPLEMENTATION, **options)

  def tolerance(self, dtype) -> float:
    """The relative tolerance for inputs of `dtype` (see `assert_close`)."""
    if dtype == jnp.float32 and self.IMPLEMENTATION.TAKES_PRECISION:
      precision = self.IMPLEMENTATION.precision or pallas_kernels.DEFAULT_F32_PRECISION
      return F32_PRECISION_TOLERANCE[precision]
    return TOLERANCE[dtype]

  def expected(self, *args, **options):
    """What the implementation must compute: the one-shot reference."""
    return base.block_sparse_attention_reference(*args, **options)

  def test_matches_reference_forward_and_vjp(self, case_name):
    case = CASES[case_name]
    args, cotangents = inputs(case)
    options = dict(block_size=case.block_size, scale=case.scale, eps=case.eps, causal=case.causal)
    (out, lse), grads = outputs_and_grads(self.attend, args, cotangents, **options)
    (ref_out, ref_lse), ref_grads = outputs_and_grads(self.expected, args, cotangents, **options)
    chex.assert_type((out, lse), jnp.float32)
    chex.assert_shape((out, lse), ((case.B, case.H, case.Lq, case.D), (case.B, case.H, case.Lq)))
    if case.causal and case.rows == "strictly_lower" and case.state == "empty":
      # Query block 0 has no tile and no state: exactly 0.
      np.testing.assert_array_equal(np.asarray(out[:, :, : case.block_size]), 0.0)
    tolerance = self.tolerance(case.dtype)
    assert_close(out, ref_out, case.dtype, "out", tolerance)
    assert_close(lse, ref_lse, case.dtype, "lse", tolerance)
    q, k, v, _, _, _, l0, acc0 = args
    for name, g, ref_g, x in zip(
      ("dq", "dk", "dv", "dl0", "dacc0"), grads, ref_grads, (q, k, v, l0, acc0)
    ):
      chex.assert_type(g, x.dtype)
      chex.assert_equal_shape((g, x))
      assert_close(g, ref_g, case.dtype, name, tolerance)
    if case.state == "empty" and case.rows == "uneven":
      # Query block 1 has no tile and no state: exactly 0, lse = log(eps), zero dq.
      rows = slice(case.block_size, 2 * case.block_size)
      np.testing.assert_array_equal(np.asarray(out[:, :, rows]), 0.0)
      np.testing.assert_allclose(np.asarray(lse[:, :, rows]), np.log(case.eps), rtol=1e-6)
      np.testing.assert_array_equal(np.asarray(grads[0][:, :, rows], np.float32), 0.0)

  def test_causal_with_every_lower_tile_is_dense_causal_attention(self):
    # Grouped-query too: 4 query heads on 2 kv heads, as jax.nn.dot_product_attention has them.
    case = Case(H=4, Hk=2, Lq=128, Lk=128, rows="all_lower", state="empty", pad=(0,), eps=0.0)
    case = dataclasses.replace(case, block_size=min(self.IMPLEMENTATION.BLOCK_SIZES or (32,)))
    args, (d_out, _) = inputs(case)
    q, k, v, ids, valid, m0, l0, acc0 = args
    attend = lambda q, k, v: self.attend(
      q, k, v, ids, valid, m0, l0, acc0, block_size=case.block_size, eps=0.0, causal=True
    )[0]
    # jax.nn's layout is [B, L, H, D].
    t = lambda x: jnp.swapaxes(x, 1, 2)
    dense = lambda q, k, v: t(jax.nn.dot_product_attention(t(q), t(k), t(v), is_causal=True))
    loss = lambda f: jax.jit(jax.value_and_grad(lambda *a: jnp.sum(f(*a) * d_out), (0, 1, 2)))
    (got, grads), (want, dense_grads) = loss(attend)(q, k, v), loss(dense)(q, k, v)
    tolerance = self.tolerance(jnp.float32)
    assert_close(got, want, jnp.float32, "loss", tolerance)
    for name, g, ref_g in zip(("dq", "dk", "dv"), grads, dense_grads):
      assert_close(g, ref_g, jnp.float32, name, tolerance)

  def test_causal_query_ignores_later_keys(self):
    # Every key and value after position p changes; queries up to p keep their output,
    # lse and gradients bit for bit (masked weights are exactly zero), p mid-block so that
    # its diagonal tile holds keys on both sides.
    case = Case(H=2, Hk=1, Lq=128, Lk=128, rows="all_lower", pad=(0,))
    case = dataclasses.replace(case, block_size=min(self.IMPLEMENTATION.BLOCK_SIZES or (32,)))
    args, cotangents = inputs(case)
    p = 128 // 2 + 5
    later = (jnp.arange(128) > p)[None, None, :, None]
    changed = list(args)
    for i in (1, 2):
      changed[i] = jnp.where(later, 3.0 - 2.0 * args[i], args[i]).astype(args[i].dtype)
    options = dict(block_size=case.block_size, causal=True)
    first = outputs_and_grads(self.attend, args, cotangents, **options)
    second = outputs_and_grads(self.attend, tuple(changed), cotangents, **options)
    (out, lse), (dq, _, _, dl0, dacc0) = first
    (out2, lse2), (dq2, _, _, dl02, dacc02) = second
    upto = slice(0, p + 1)
    for name, a, b in (
      ("out", out, out2),
      ("lse", lse, lse2),
      ("dq", dq, dq2),
      ("dl0", dl0, dl02),
      ("dacc0", dacc0, dacc02),
    ):
      np.testing.assert_array_equal(np.asarray(a)[:, :, upto], np.asarray(b)[:, :, upto], name)
    # ...while the later queries do see the change.
    assert not np.array_equal(np.asarray(out)[:, :, p + 1 :], np.asarray(out2)[:, :, p + 1 :])
