"""The registry, and the contract every registered attention shares.

Every registered attention must import and build here: a module that fails to import is a
test failure. Each method is built once and its checks run in one jitted program (eager
op-by-op dispatch would dominate the test time).
"""

import ast
import dataclasses
import functools
import inspect
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mra_jax import attentions, knobs

B, L, H, D = 2, 48, 2, 16
ALL = (
  "adamra bigbird h_transformer_1d linformer local longformer mra2 mra2_s nystromformer "
  "performer reformer scatterbrain soft softmax yoso"
).split()
# The sparse ones' padding contract is tested next to them (local_test.py etc.); here they
# only build, run and differentiate.
SPARSE = ("bigbird", "h_transformer_1d", "local", "longformer", "reformer", "scatterbrain")
DENSE_OR_LINEAR = tuple(n for n in ALL if n not in SPARSE)
# Small settings so every method's own structure (not a degenerate limit) is exercised at L=48.
SMALL = {
  "adamra": {"selection": "hard"},
  "linformer": {"projection_length": 16},
  "nystromformer": {"num_landmarks": 8},
  "performer": {"num_features": 32},
  "soft": {"num_landmarks": 8, "pinv_iterations": 8},
  "yoso": {"num_hash": 4},
  "mra2": {"block_size": 16, "block_per_row": 1},
  "mra2_s": {"block_size": 16, "block_per_row": 1},
  "softmax": {},
  "local": {"window_size": 16},
  "longformer": {"window_size": 16},
  "bigbird": {"block_size": 8},
  "h_transformer_1d": {"block_size": 8},
  "reformer": {},
  "scatterbrain": {"window_size": 16},
}


@functools.cache
def _module(name):
  knobs = {k: v for k, v in SMALL[name].items() if k in attentions.knob_defaults(name)}
  return attentions.build(name, num_heads=H, head_dim=D, max_length=64, rngs=nnx.Rngs(0), **knobs)


def _inputs(seed=0):
  q, k, v = jax.random.normal(jax.random.key(seed), (3, B, L, H, D))
  mask = jnp.arange(L)[None, :] < jnp.array([L, 29])[:, None]
  return q, k, v, mask


@functools.cache
def _contract_outputs(name):
  """(out, out with garbage in the padding, out with an all-padding row, bf16 out).

  The three float32 cases are stacked on the batch axis of one call: one small program.
  """
  graphdef, state = nnx.split(_module(name))
  q, k, v, mask = _inputs()
  pad = ~mask[:, :, None, None]
  garbage = lambda x, c: jnp.where(pad, c, x)
  one_real = jnp.zeros_like(mask).at[0, :5].set(True)
  cat = lambda a, b, c: jnp.concatenate([a, b, c], axis=0)
  args = (
    cat(q, garbage(q, 1e4), q),
    cat(k, garbage(k, jnp.nan), k),
    cat(v, garbage(v, -3e3), v),
    cat(mask, mask, one_real),
  )

  @jax.jit
  def run(state, q, k, v, mask):
    layer = nnx.merge(graphdef, state)
    bf = lambda x: x.astype(jnp.bfloat16)
    return layer(q, k, v, mask), layer(bf(q), bf(k), bf(v), mask)

  out, out_bf16 = jax.tree.map(np.asarray, run(state, *args))
  return out[:B], out[B : 2 * B], out[2 * B :], out_bf16[:B]


def test_names_are_the_fifteen_sorted():
  assert attentions.names() == ALL


def test_unknown_name_lists_the_names():
  with pytest.raises(ValueError, match="name='flash'.*softmax"):
    attentions.build("flash", num_heads=2, head_dim=8, max_length=8, rngs=nnx.Rngs(0))


def test_unknown_knob_names_it_and_the_allowed_ones():
  with pytest.raises(
    ValueError,
    match=r"'num_landmark' \(did you mean 'num_landmarks'\?\); known: \[.*'num_landmarks'",
  ):
    attentions.build(
      "nystromformer", num_heads=2, head_dim=8, max_length=8, rngs=nnx.Rngs(0), num_landmark=4
    )


def _documented_defaults() -> dict[str, dict[str, object]]:
  """The "Knobs (defaults)" column of docs/attentions.md's table, parsed."""
  path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "docs", "attentions.md")
  with open(path) as f:
    rows = [line.split("|") for line in f if line.startswith("| `")]
  out, previous = {}, None
  for row in rows:
    name, knobs = row[1].strip().strip("`"), row[4].strip()
    if knobs == "same":  # "same as the row above"
      out[name] = out[previous]
    elif knobs == "none":
      out[name] = {}
    else:
      text = re.match(r"`([^`]*)`", knobs).group(1)
      out[name] = {k: ast.literal_eval(v) for k, v in (p.split("=") for p in text.split(", "))}
    previous = name
  return out


def test_the_documented_defaults_are_the_registrys():
  """docs/attentions.md's table of defaults (the MRA paper's LRA configs) cannot drift from
  the knobs dataclasses that declare them."""
  documented = _documented_defaults()
  assert len(documented) == 9
  for name, defaults in documented.items():
    assert defaults == attentions.knob_defaults(name), name


# What a command-line parser can set (the LRA configs build their flags from knob_types).
_SETTABLE_TYPES = (bool, int, float, str, tuple)


@pytest.mark.parametrize("name", ALL)
def test_knobs_are_a_frozen_documented_typed_dataclass(name):
  cls = attentions.knobs_class(name)
  assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls
  # Every field, pinned ones included, has its entry in the class's `Attributes:`.
  undocumented = set(knobs.names(cls)) - {k for k, v in knobs.docs(cls).items() if v}
  assert not undocumented, f"{cls.__name__} does not document {sorted(undocumented)}"
  defaults, docs, types = (
    attentions.knob_defaults(name),
    attentions.knob_docs(name),
    attentions.knob_types(name),
  )
  assert set(docs) == set(types) == set(defaults)
  for knob, default in defaults.items():
    assert docs[knob], (name, knob)
    assert types[knob] in _SETTABLE_TYPES, (name, knob, types[knob])
    if default is not None:
      assert isinstance(default, types[knob]), (name, knob, default, types[knob])
  if defaults:  # Frozen: a built module's knobs cannot change under it.
    with pytest.raises(dataclasses.FrozenInstanceError):
      setattr(attentions.make_knobs(name), next(iter(defaults)), None)


@pytest.mark.parametrize("name", ALL)
def test_modules_take_the_knobs_then_the_shape_keywords(name):
  params = list(inspect.signature(attentions.module_class(name).__init__).parameters.values())
  assert [p.name for p in params] == [
    "self",
    "knobs",
    "num_heads",
    "head_dim",
    "max_length",
    "rngs",
  ], name
  assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:]), name


@pytest.mark.parametrize("name", ALL)
def test_knob_defaults_are_accepted_by_build(name):
  defaults = attentions.knob_defaults(name)
  # Building with every default spelled out must equal building with none (abstractly: no
  # parameters are drawn, so this costs no compile).
  shapes = lambda **kw: jax.tree.map(
    lambda x: x.shape,
    nnx.state(
      nnx.eval_shape(
        lambda: attentions.build(
          name, num_heads=H, head_dim=D, max_length=64, rngs=nnx.Rngs(0), **kw
        )
      )
    ),
  )
  assert shapes(**defaults) == shapes()


@pytest.mark.parametrize("name", DENSE_OR_LINEAR)
def test_padding_semantics(name):
  out, out_garbage, out_one_real, out_bf16 = _contract_outputs(name)
  assert out.shape == (B, L, H, D) and out.dtype == np.float32
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[1, 29:], 0.0)  # Padded queries are exactly 0.
  # Garbage (even NaN) in padded positions changes nothing.
  np.testing.assert_allclose(out_garbage, out, atol=1e-5, rtol=1e-5)
  # An all-padding row gives 0, never NaN.
  assert np.all(np.isfinite(out_one_real))
  np.testing.assert_array_equal(out_one_real[1], 0.0)
  np.testing.assert_array_equal(out_one_real[0, 5:], 0.0)
  assert out_bf16.dtype == jnp.bfloat16
  bf16 = out_bf16.astype(np.float32)
  assert np.all(np.isfinite(bf16))
  if name != "yoso":  # A bf16 rounding can flip a hash bit: YOSO's buckets then differ.
    np.testing.assert_allclose(bf16, out, atol=0.1)


@pytest.mark.parametrize("name", SPARSE)
def test_sparse_ones_build_and_run(name):
  layer = _module(name)
  q, k, v, mask = _inputs()
  out = nnx.jit(lambda m, *a: m(*a))(layer, q, k, v, mask)
  assert out.shape == (B, L, H, D) and bool(jnp.all(jnp.isfinite(out)))
  np.testing.assert_array_equal(np.asarray(out[1, 29:]), 0.0)


# MRA's gradients are tested with mra_attention (tests/mra_jax); its modules add nothing there.
@pytest.mark.parametrize("name", [n for n in DENSE_OR_LINEAR if not n.startswith("mra2")])
def test_jit_and_grad_through_split_merge(name):
  layer = _module(name)
  graphdef, state, rest = nnx.split(layer, nnx.Param, ...)
  q, k, v, mask = _inputs()
  target = jax.random.normal(jax.random.key(9), (B, L, H, D))

  @jax.jit
  def loss_and_grads(state, q, k, v):
    def loss(state, q, k, v):
      out = nnx.merge(graphdef, state, rest)(q, k, v, mask)
      return jnp.sum(out * target)

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(state, q, k, v)

  value, grads = loss_and_grads(state, q, k, v)
  for g in jax.tree.leaves(grads):
    assert bool(jnp.all(jnp.isfinite(g)))
  assert float(jnp.abs(grads[3]).sum()) > 0  # v always gets a gradient.
  if name == "adamra":  # Hard routing: the router learns through the straight-through gate.
    assert float(jnp.abs(grads[0]["router_weight"][...]).sum()) > 0
  np.testing.assert_allclose(
    float(value), float(jnp.sum(layer(q, k, v, mask) * target)), rtol=1e-4, atol=1e-4
  )


def test_fixed_random_features_are_not_params():
  for name in ("performer", "yoso"):
    layer = _module(name)
    assert not jax.tree.leaves(nnx.state(layer, nnx.Param))
    assert jax.tree.leaves(nnx.state(layer))  # ...but they live in the module state.


@pytest.mark.parametrize("name", ALL)
def test_every_entry_imports_an_nnx_module_class(name):
  # An ImportError (or a wrong class name) fails here, naming the entry.
  cls = attentions.module_class(name)
  assert isinstance(cls, type) and issubclass(cls, nnx.Module), (name, cls)
