"""Fixed random state of the attentions, and the hash generator that draws it inside jit.

`FixedRandom` holds what a module draws once and never trains (Performer's and
AdaMRA's features, YOSO's hyperplanes, the keys of BigBird, Reformer and Scatterbrain).
`hash_uniform` / `hash_normal` draw the patterns that depend on the runtime length
inside jit (BigBird's random blocks, Reformer's rotations, Scatterbrain's features).
"""
# pylint: disable=invalid-name

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx


class FixedRandom(nnx.Variable):
  """Random state drawn once from the module's rngs and never trained.

  Not an `nnx.Param`, so an optimiser built with `wrt=nnx.Param` leaves it alone,
  while it still lives in the module state (checkpointed, split/merged with it).
  """


def hash_uniform(random_key: jax.Array, shape: tuple[int, ...], stream: int = 0) -> jax.Array:
  """Uniform [0, 1) float32 numbers from a counter-based hash of (key, index).

  `jax.random`'s threefry costs seconds of CPU compile time per new shape, this costs
  almost nothing, and it is bit-identical on every backend and version. Statistical
  quality (murmur3 finaliser, two rounds) is ample for choosing blocks and random
  projections; it is not a cryptographic generator.

  Args:
    random_key: a typed jax.random key or its raw uint32 key data.
    shape: output shape.
    stream: selects an independent stream for the same key.

  Returns:
    float32 array of `shape`.
  """
  return _hash_uniform(_key_words(random_key), tuple(shape), stream)


def hash_normal(random_key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Standard normal float32 numbers of `shape` (Box-Muller on two `hash_uniform` streams)."""
  return _hash_normal(_key_words(random_key), tuple(shape))


def _mix32(x):
  """murmur3's 32-bit finaliser: a bijection that scrambles every input bit."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _key_words(random_key):
  if jnp.issubdtype(random_key.dtype, jax.dtypes.prng_key):
    random_key = jax.random.key_data(random_key)
  return jnp.ravel(random_key).astype(jnp.uint32)


# Jitted whole: run eagerly, each of the ~20 integer ops would compile on its own.
@functools.partial(jax.jit, static_argnames=("shape", "stream"))
def _hash_uniform(words, shape, stream):
  seed_a = _mix32(words[0] ^ jnp.uint32(0x9E3779B9 * (stream + 1) & 0xFFFFFFFF))
  seed_b = _mix32(words[-1] + seed_a)
  counter = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
  bits = _mix32(_mix32(counter ^ seed_a) + seed_b)
  return (bits >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


@functools.partial(jax.jit, static_argnames="shape")
def _hash_normal(words, shape):
  u1 = 1.0 - _hash_uniform(words, shape, 1)  # (0, 1]: log is finite.
  u2 = _hash_uniform(words, shape, 2)
  return jnp.sqrt(-2.0 * jnp.log(u1)) * jnp.cos(2.0 * jnp.pi * u2)
