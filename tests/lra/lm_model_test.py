"""The LM task's decoder: causal end to end, decoding from a cache equals the full pass,
rotary positions run at any length, only causal attentions are taken."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import lm
from lra import decoder, models, run_config

from . import lm_testing

L = 48


@functools.cache
def _model(attention: str):
  run = run_config.from_config_dict(
    lm_testing.tiny_config("", attention, max_length=L, **{"model.num_layers": 2})
  )
  model = models.build(run.model, rngs=nnx.Rngs(3))
  graphdef, state = nnx.split(model)
  return model, jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids)), state


def _ids(seed=0, length=L):
  return jax.random.randint(jax.random.key(seed), (2, length), 1, 256)


@pytest.mark.parametrize("attention", lm_testing.CAUSAL)
def test_logits_up_to_t_ignore_every_byte_after_t(attention):
  _, forward, state = _model(attention)
  ids = _ids()
  want = forward(state, ids)
  for t in (0, 17, 31, L - 2):
    changed = ids.at[:, t + 1 :].set(_ids(seed=t + 1)[:, t + 1 :])
    got = forward(state, changed)
    np.testing.assert_array_equal(got[:, : t + 1], want[:, : t + 1])
    assert not np.allclose(got[:, t + 1 :], want[:, t + 1 :])


@pytest.mark.parametrize("attention", lm_testing.CAUSAL)
def test_decoding_from_the_cache_equals_the_full_model(attention):
  model, forward, state = _model(attention)
  ids = _ids(seed=5)
  want = forward(state, ids)
  graphdef = nnx.graphdef(model)
  step = jax.jit(lambda s, i, c: nnx.merge(graphdef, s).decode(i, c))
  logits, caches = step(state, ids[:, :11], model.init_cache(2, L))  # A prompt, then bytes.
  got = [logits]
  for t in range(11, L):
    logits, caches = step(state, ids[:, t : t + 1], caches)
    got.append(logits)
  got = jnp.concatenate(got, axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
  np.testing.assert_array_equal(jnp.argmax(got, -1), jnp.argmax(want, -1))  # Greedy bytes.


def test_rotary_positions_are_relative_and_the_model_runs_at_any_length():
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))
  dot = lambda i, j: jnp.sum(decoder.rotary(q, jnp.array([i])) * decoder.rotary(k, jnp.array([j])))
  np.testing.assert_allclose(dot(5, 2), dot(105, 102), rtol=1e-4)
  assert not np.isclose(dot(5, 2), dot(5, 4))
  _, forward, state = _model("softmax")
  assert forward(state, _ids(length=3 * L)).shape == (2, 3 * L, 256)


def test_only_causal_attentions_are_taken():
  for name in ("softmax", "local", "mra2", "mra2_s"):
    run = run_config.from_config_dict(lm.get_config(f"attention={name}"))
    assert run.model.attention_knobs.is_causal and run.model.objective == "next_token"
  assert models.causal_attentions() == ["local", "mra2", "mra2_s", "softmax"]
  with pytest.raises(
    ValueError,
    match=r"needs a causal attention; attention='performer' has no is_causal knob\. "
    r"Causal attentions: \['local', 'mra2', 'mra2_s', 'softmax'\]",
  ):
    run_config.from_config_dict(lm.get_config("attention=performer"))
  config = lm.get_config("attention=softmax")
  config.attention_kwargs.is_causal = False  # Forced on: a decoder is causal.
  assert run_config.from_config_dict(config).model.attention_knobs.is_causal
  config.model.positions = "learned"
  with pytest.raises(ValueError, match="positions='rope' is the language-model decoder's"):
    run_config.from_config_dict(config)


def test_the_configs_commands_build_and_compare_at_equal_tiles():
  for arg in re.findall(r"--config=configs/lm\.py:(\S+)", lm.__doc__):
    run_config.from_config_dict(lm.get_config(arg))
  for variant in ("", "cpu,", "smoke,"):
    runs = {
      name: run_config.from_config_dict(lm.get_config(f"{variant}attention={name}"))
      for name in ("local", "mra2")
    }
    mra = runs["mra2"].attention_kwargs
    assert runs["local"].attention_kwargs.window_size == mra.block_per_row * mra.block_size
  cpu = run_config.from_config_dict(lm.get_config("cpu"))
  assert cpu.max_length >= 2048 and cpu.eval_lengths and cpu.generate_data
