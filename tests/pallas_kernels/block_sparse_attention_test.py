"""Pallas block-sparse attention in interpret mode against the pure-jnp reference."""
# pylint: disable=invalid-name

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu
from jax.experimental.pallas import tpu as pltpu

import pallas_kernels
from pallas_kernels import block_sparse_attention_reference as reference

# Max abs error allowed, relative to the largest reference magnitude of the same array.
# bf16: the kernel feeds P and dO to the MXU/tensor cores in bf16, the reference stays f32.
TOLERANCE = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}


def _tile_ids(rng, B, H, Nq, Nk, K, empty_rows=(1,)):
  """Sorted unique global top-k-like ids: uneven rows, `empty_rows` hold no tile."""
  allowed = np.array([t for t in range(Nq * Nk) if t // Nk not in empty_rows])
  ids = [np.sort(rng.choice(allowed, K, replace=False)) for _ in range(B * H)]
  return jnp.asarray(np.stack(ids).reshape(B, H, K), jnp.int32)


def _inputs(
  *,
  B=1,
  H=2,
  Lq=256,
  Lk=256,
  D=64,
  block_size=32,
  K=10,
  dtype=jnp.float32,
  state="mra",
  pad=40,
  seed=0,
):
  rng = np.random.default_rng(seed)
  Nq, Nk = Lq // block_size, Lk // block_size
  normal = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  q, k, v = normal(B, H, Lq, D), normal(B, H, Lk, D), normal(B, H, Lk, D)
  # Padding at the end: the last key block is all padding, the one before partly.
  key_valid = jnp.asarray(np.arange(Lk)[None, :] < Lk - pad).repeat(B, axis=0)
  if state == "mra":
    # A low-resolution-like state on half the query blocks, empty elsewhere.
    has_state = np.arange(Lq)[None, None, :] // block_size % 2 == 0
    m0 = jnp.where(has_state, normal(B, H, Lq), -jnp.inf)
    l0 = jnp.where(has_state, jnp.asarray(rng.uniform(0.5, 3.0, (B, H, Lq)), jnp.float32), 0.0)
    acc0 = jnp.where(has_state[..., None], normal(B, H, Lq, D), 0.0)
  else:
    m0 = jnp.full((B, H, Lq), -jnp.inf)
    l0, acc0 = jnp.zeros((B, H, Lq)), jnp.zeros((B, H, Lq, D))
  args = (
    q.astype(dtype),
    k.astype(dtype),
    v.astype(dtype),
    _tile_ids(rng, B, H, Nq, Nk, K),
    key_valid,
    m0,
    l0,
    acc0,
  )
  cotangents = (normal(B, H, Lq, D), normal(B, H, Lq))
  return args, cotangents


def _assert_close(actual, expected, dtype, name):
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  assert np.all(np.isfinite(actual)), f"{name}: non-finite values"
  atol = TOLERANCE[dtype] * max(1.0, float(np.max(np.abs(expected))))
  np.testing.assert_allclose(actual, expected, rtol=0, atol=atol, err_msg=name)


def _check_against_reference(args, cotangents, *, block_size, dtype, backend, interpret, **options):
  """Output and VJP (q, k, v, l0, acc0) under a random cotangent on (out, lse)."""
  q, k, v, ids, valid, m0, l0, acc0 = args

  def run(fn):
    f = lambda q, k, v, l0, acc0: fn(
      q, k, v, ids, valid, m0, l0, acc0, block_size=block_size, **options
    )

    # One jitted program per case: far less compile time than eager op-by-op dispatch.
    @jax.jit
    def outs_and_grads(q, k, v, l0, acc0, cotangents):
      outs, vjp = jax.vjp(f, q, k, v, l0, acc0)
      return outs, vjp(cotangents)

    return outs_and_grads(q, k, v, l0, acc0, cotangents)

  (out, lse), grads = run(
    lambda *a, **kw: pallas_kernels.block_sparse_attention(
      *a, **kw, backend=backend, interpret=interpret
    )
  )
  (ref_out, ref_lse), ref_grads = run(reference)
  assert out.dtype == jnp.float32 and lse.dtype == jnp.float32
  _assert_close(out, ref_out, dtype, "out")
  _assert_close(lse, ref_lse, dtype, "lse")
  for name, g, ref_g, x in zip(
    ("dq", "dk", "dv", "dl0", "dacc0"), grads, ref_grads, (q, k, v, l0, acc0)
  ):
    assert g.dtype == x.dtype, name
    _assert_close(g, ref_g, dtype, name)
  return out, lse, grads


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("block_size", [32, 64])
@pytest.mark.parametrize("state", ["mra", "empty"])
def test_triton_interpret_matches_reference(dtype, block_size, state):
  args, cts = _inputs(
    block_size=block_size, K=10 if block_size == 32 else 5, dtype=dtype, state=state
  )
  out, lse, grads = _check_against_reference(
    args, cts, block_size=block_size, dtype=dtype, backend="triton", interpret=True
  )
  if state == "empty":
    # Query block 1 has no tile and no state: exactly 0, lse = log(eps), zero gradient.
    rows = slice(block_size, 2 * block_size)
    np.testing.assert_array_equal(np.asarray(out[:, :, rows]), 0.0)
    np.testing.assert_allclose(
      np.asarray(lse[:, :, rows]), np.log(pallas_kernels.DEFAULT_EPS), rtol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(grads[0][:, :, rows], np.float32), 0.0)


def test_cross_lengths_and_odd_head_dim():
  # Lq != Lk, and D = 48 (not a power of two: padded to 64 for the Triton lowering).
  args, cts = _inputs(Lq=128, Lk=320, D=48, K=12, pad=70, seed=3)
  _check_against_reference(
    args, cts, block_size=32, dtype=jnp.float32, backend="triton", interpret=True
  )


def test_all_tiles_in_one_row_and_explicit_scale():
  # Global top-k may put every tile in one query block (others get none).
  args, cts = _inputs(Lq=128, Lk=128, K=4, pad=0, state="mra", seed=5)
  ids = jnp.broadcast_to(jnp.arange(8, 12, dtype=jnp.int32), (1, 2, 4))  # row 2 only
  args = args[:3] + (ids,) + args[4:]
  _check_against_reference(
    args,
    cts,
    block_size=32,
    dtype=jnp.float32,
    backend="triton",
    interpret=True,
    scale=0.3,
    eps=1e-3,
  )


def test_no_tiles_at_all_returns_initial_state():
  args, _ = _inputs(Lq=64, Lk=64, K=0, pad=0, state="mra")
  q, k, v, ids, valid, m0, l0, acc0 = args
  assert ids.shape == (1, 2, 0)
  out, lse = pallas_kernels.block_sparse_attention(*args, block_size=32, interpret=True)
  ref_out, ref_lse = reference(*args, block_size=32)
  _assert_close(out, ref_out, jnp.float32, "out")
  _assert_close(lse, ref_lse, jnp.float32, "lse")
  del q, k, v, ids, valid, m0, l0, acc0


@pytest.mark.parametrize("block_size", [32, 128])
def test_mosaic_tpu_kernel_in_hlo_interpret_mode(block_size):
  args, cts = _inputs(
    Lq=256,
    Lk=256,
    block_size=block_size,
    K=6 if block_size == 32 else 2,
    dtype=jnp.bfloat16,
    pad=150 if block_size == 128 else 40,
  )
  if block_size == 128:  # two blocks: keep row 0 non-empty, row 1 empty
    args = args[:3] + (jnp.broadcast_to(jnp.array([0, 1], jnp.int32), (1, 2, 2)),) + args[4:]
  _check_against_reference(
    args, cts, block_size=block_size, dtype=jnp.bfloat16, backend="mosaic_tpu", interpret=True
  )


def test_mosaic_tpu_kernel_in_tpu_interpret_mode():
  # TPU semantics (simulated VMEM/SMEM, scalar prefetch, output-revisit checks). Slow: one
  # small case, one head, one tile-free row, one fully padded key block.
  args, cts = _inputs(H=1, Lq=128, Lk=128, block_size=64, K=2, state="mra", pad=70)
  try:
    _check_against_reference(
      args,
      cts,
      block_size=64,
      dtype=jnp.float32,
      backend="mosaic_tpu",
      interpret=pltpu.InterpretParams(),
    )
  finally:
    pltpu.reset_tpu_interpret_mode_state()


def test_jit_and_default_backend():
  args, _ = _inputs(Lq=128, Lk=128, K=5, block_size=32)
  f = jax.jit(lambda *a: pallas_kernels.block_sparse_attention(*a, block_size=32))
  out, lse = f(*args)
  ref_out, ref_lse = reference(*args, block_size=32)
  _assert_close(out, ref_out, jnp.float32, "out")
  _assert_close(lse, ref_lse, jnp.float32, "lse")


def test_reference_gradients_numerically():
  args, _ = _inputs(H=1, Lq=64, Lk=64, D=8, block_size=32, K=2, pad=10, state="mra")
  q, k, v, ids, valid, m0, l0, acc0 = args
  f = lambda q, k, v, l0, acc0: reference(q, k, v, ids, valid, m0, l0, acc0, block_size=32)
  with jax.enable_x64(True):
    f64 = lambda x: jnp.asarray(x, jnp.float64)
    jtu.check_grads(
      f, tuple(map(f64, (q, k, v, l0, acc0))), order=1, modes=("rev",), atol=1e-2, rtol=1e-2
    )


_GOOD = dict(Lq=64, Lk=64, D=16, K=2, block_size=32)


@pytest.mark.parametrize(
  "index, bad, arg_name",
  [
    (0, jnp.zeros((1, 2, 64)), "q_BxHxLqxD"),
    (1, jnp.zeros((1, 2, 64, 8)), "k_BxHxLkxD"),
    (2, jnp.zeros((1, 2, 32, 16)), "v_BxHxLkxD"),
    (0, jnp.zeros((1, 2, 64, 16), jnp.int32), "q_BxHxLqxD"),
    (3, jnp.zeros((1, 2, 2), jnp.float32), "tile_ids_BxHxK"),
    (3, jnp.zeros((1, 2, 5), jnp.int32), "tile_ids_BxHxK"),
    (4, jnp.ones((1, 32), bool), "key_valid_BxLk"),
    (5, jnp.zeros((1, 2, 32)), "m0_BxHxLq"),
    (6, jnp.zeros((2, 2, 64)), "l0_BxHxLq"),
    (7, jnp.zeros((1, 2, 64, 8)), "acc0_BxHxLqxD"),
  ],
)
def test_bad_arrays_raise_naming_the_argument(index, bad, arg_name):
  args, _ = _inputs(**_GOOD)
  args = args[:index] + (bad,) + args[index + 1 :]
  with pytest.raises(ValueError, match=arg_name):
    pallas_kernels.block_sparse_attention(*args, block_size=32, interpret=True)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(block_size=16), "block_size"),
    (dict(block_size=128, backend="triton"), "block_size"),
    (dict(block_size=32, backend="cuda"), "backend"),
    (dict(block_size=32, backend="triton", interpret=pltpu.InterpretParams()), "interpret"),
  ],
)
def test_bad_options_raise(kwargs, match):
  args, _ = _inputs(**_GOOD)
  kwargs.setdefault("interpret", True)
  with pytest.raises(ValueError, match=match):
    pallas_kernels.block_sparse_attention(*args, **kwargs)


def test_length_not_multiple_of_block_raises():
  args, _ = _inputs(Lq=96, Lk=96, D=16, K=2, block_size=32)
  with pytest.raises(ValueError, match="block_size=64"):
    pallas_kernels.block_sparse_attention(*args, block_size=64, interpret=True)
