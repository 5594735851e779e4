"""Decoding with a cache: one token or a chunk at a time equals the full causal call."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mra_jax
from mra_jax import causal, decode


def _qkv(B=2, L=80, H=4, Hk=2, D=8, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (
    jax.random.normal(keys[0], (B, L, H, D)),
    jax.random.normal(keys[1], (B, L, Hk, D)),
    jax.random.normal(keys[2], (B, L, Hk, D)),
  )


def _decode_in_chunks(config, q, k, v, chunks):
  """Decodes the sequence chunk by chunk: the first eagerly (a prefill from position 0, the
  causal op itself), the rest with one jitted step (gathering from the cache)."""
  B, L, H, D = q.shape
  cache = decode.init_cache(B, L, H, D, num_kv_heads=k.shape[2], config=config)
  eager = functools.partial(decode.decode_step, config=config)
  step = jax.jit(eager)
  outs, start = [], 0
  for i, size in enumerate(chunks):
    window = slice(start, start + size)
    out, cache = (eager if i == 0 else step)(cache, q[:, window], k[:, window], v[:, window])
    outs.append(out)
    start += size
  return jnp.concatenate(outs, axis=1), cache


_FAST_DECODE = {("previous_block", "per_query", "full"), ("first_query", "per_block", "sparse")}


@pytest.mark.parametrize(
  "selection,low_resolution,approx_mode",
  [
    combo if combo in _FAST_DECODE else pytest.param(*combo, marks=pytest.mark.slow)
    for combo in itertools.product(causal.SELECTIONS, causal.LOW_RESOLUTIONS, ("full", "sparse"))
  ],
)
def test_prefill_then_single_tokens_equal_the_full_call(selection, low_resolution, approx_mode):
  config = mra_jax.MraConfig(
    is_causal=True,
    block_size=16,
    block_per_row=3,
    approx_mode=approx_mode,
    causal_selection=selection,
    causal_low_resolution=low_resolution,
    initial_prior_first_n_blocks=1,
  )
  q, k, v = _qkv()
  want = mra_jax.mra_attention(q, k, v, config=config)
  got, cache = _decode_in_chunks(config, q, k, v, [21] + [1] * 59)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
  assert int(cache.index) == 80


@pytest.mark.slow  # the fast tier decodes a prefill then single tokens (above)
def test_chunks_of_any_size_equal_the_full_call():
  config = mra_jax.MraConfig(is_causal=True, block_size=16, block_per_row=2)
  q, k, v = _qkv(L=96)
  want = mra_jax.mra_attention(q, k, v, config=config)
  got, _ = _decode_in_chunks(config, q, k, v, [1, 7, 16, 3, 40, 29])
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_the_layer_decodes_like_its_full_call():
  layer = mra_jax.MraSelfAttention(
    4, 32, num_kv_heads=2, rngs=nnx.Rngs(0), is_causal=True, block_size=16, block_per_row=2
  )
  x = jax.random.normal(jax.random.key(1), (2, 70, 32))
  want = layer(x)
  layer.init_cache((2, 70, 32))
  prefill = layer(x[:, :33], decode=True)

  @nnx.jit
  def step(layer, x_t):
    return layer(x_t, decode=True)

  outs = [prefill] + [step(layer, x[:, t : t + 1]) for t in range(33, 70)]
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), want, atol=2e-5, rtol=1e-5)


def test_writing_past_the_cache_is_an_error():
  config = mra_jax.MraConfig(is_causal=True, block_size=16)
  q, k, v = _qkv(L=20)
  cache = decode.init_cache(2, 20, 4, 8, num_kv_heads=2, config=config)
  _, cache = decode.decode_step(cache, q[:, :18], k[:, :18], v[:, :18], config=config)
  with pytest.raises(ValueError, match=r"positions 18\.\.20 past the cache's max_length=20"):
    decode.decode_step(cache, q[:, :3], k[:, :3], v[:, :3], config=config)
  step = jax.jit(lambda c, *x: decode.decode_step(c, *x, config=config))
  with pytest.raises(Exception, match=r"positions 18\.\.20 past the cache's max_length=20"):
    jax.block_until_ready(step(cache, q[:, :3], k[:, :3], v[:, :3]))


def test_bad_decode_use_is_named():
  q, k, v = _qkv(L=4)
  with pytest.raises(ValueError, match="is_causal=False"):
    decode.init_cache(2, 8, 4, 8, config=mra_jax.MraConfig())
  config = mra_jax.MraConfig(is_causal=True)
  cache = decode.init_cache(2, 8, 4, 8, num_kv_heads=2, config=config)
  with pytest.raises(ValueError, match="key and value must be"):
    decode.decode_step(cache, q, k[:, :, :1], v[:, :, :1], config=config)
  layer = mra_jax.MraSelfAttention(2, 8, rngs=nnx.Rngs(0), is_causal=True)
  with pytest.raises(ValueError, match="call init_cache"):
    layer(jnp.ones((1, 1, 8)), decode=True)
  bidirectional = mra_jax.MraSelfAttention(2, 8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="needs a causal layer"):
    bidirectional(jnp.ones((1, 1, 8)), decode=True)


def test_a_step_reads_summaries_and_chosen_blocks_only():
  config = mra_jax.MraConfig(is_causal=True, block_size=32, block_per_row=8)
  # At 64K: 2048 block summaries and 8 blocks of 32, against 65536 keys for dense.
  assert decode.positions_read(config, 65536) == 2048 + 8 * 32
