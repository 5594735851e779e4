"""The block-sparse attention op's entry point: one function, implementations by name."""
# pylint: disable=invalid-name

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from pallas_kernels.block_sparse_attention import (
  base,
  pallas_mosaic_tpu,
  pallas_triton,
  sharding,
  xla_chunked,
)

# Name -> implementation: a function with `block_sparse_attention_reference`'s signature
# (the Pallas ones also take `interpret=`). All are held to the same contract tests.
# A Mosaic GPU implementation ("pallas_mosaic_gpu": the Triton lowering is deprecated from
# jax 0.11) belongs here as one more peer; "auto" would then pick it on GPUs it supports.
IMPLEMENTATIONS: dict[str, Callable[..., tuple[jax.Array, jax.Array]]] = {
  "reference": base.block_sparse_attention_reference,
  "xla_chunked": xla_chunked.xla_chunked_block_sparse_attention,
  "pallas_triton": pallas_triton.pallas_triton_block_sparse_attention,
  "pallas_mosaic_tpu": pallas_mosaic_tpu.pallas_mosaic_tpu_block_sparse_attention,
}
# Implementations whose kernels can run in Pallas interpret mode (they take `interpret=`).
INTERPRETABLE = ("pallas_triton", "pallas_mosaic_tpu")
# Implementations that take `precision=` (a float32 dot precision, `pallas_triton.F32_PRECISIONS`).
# The others compute float32 inputs at the platform's float32 dot precision and refuse one.
TAKES_PRECISION = ("pallas_triton",)
# "auto" on each platform (jax's default backend); xla_chunked anywhere else.
_AUTO = {"gpu": "pallas_triton", "cuda": "pallas_triton", "rocm": "pallas_triton"}
_AUTO["tpu"] = "pallas_mosaic_tpu"


def resolve_implementation(implementation: str) -> str:
  """The implementation name `implementation` stands for ("auto" made concrete).

  Raises:
    ValueError: `implementation` is neither "auto" nor a key of `IMPLEMENTATIONS`.
  """
  if implementation == "auto":
    return _AUTO.get(jax.default_backend(), "xla_chunked")
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
      f"implementation must be 'auto' or one of {tuple(IMPLEMENTATIONS)}, got {implementation=}"
    )
  return implementation


def block_sparse_attention(
  q_BxHxLqxD: jax.Array,
  k_BxHxLkxD: jax.Array,
  v_BxHxLkxD: jax.Array,
  tile_ids_BxHxK: jax.Array,
  key_valid_BxLk: jax.Array,
  m0_BxHxLq: jax.Array,
  l0_BxHxLq: jax.Array,
  acc0_BxHxLqxD: jax.Array,
  *,
  block_size: int,
  scale: float | None = None,
  eps: float = base.DEFAULT_EPS,
  implementation: str = "auto",
  precision: str | None = None,
  interpret: Any = None,
) -> tuple[jax.Array, jax.Array]:
  """Block-sparse attention from an initial online-softmax state (maths in `base`).

  Differentiable in q, k, v, l0 and acc0; m0, tile_ids and key_valid get no gradient.

  Args:
    q_BxHxLqxD: queries, float32 / bfloat16 / float16; Lq a multiple of `block_size`.
    k_BxHxLkxD: keys, q's dtype; Lk a multiple of `block_size`.
    v_BxHxLkxD: values, q's dtype.
    tile_ids_BxHxK: int flat tile ids `r * (Lk // block_size) + c`, sorted ascending and
      unique per (batch, head); rows may hold any number of tiles, including none.
    key_valid_BxLk: bool, False for padded keys (they get no weight).
    m0_BxHxLq: initial running maximum (-inf: empty state), cast to float32.
    l0_BxHxLq: initial normaliser on the scale of m0, cast to float32.
    acc0_BxHxLqxD: initial numerator on the scale of m0, cast to float32.
    block_size: tile side. "pallas_triton" takes 32 or 64, "pallas_mosaic_tpu" 32, 64 or
      128, "reference" and "xla_chunked" any size that divides the lengths.
    scale: logit scale; default `1 / sqrt(D)`.
    eps: added to the normaliser (the published code's 1e-6).
    implementation: "auto" ("pallas_triton" on GPU, "pallas_mosaic_tpu" on TPU,
      "xla_chunked" elsewhere) or a key of `IMPLEMENTATIONS`: "reference" (one shot of
      pure jnp, for tests), "xla_chunked" (chunked jnp with a flash-style VJP, for CPUs),
      "pallas_triton" (GPU) or "pallas_mosaic_tpu" (TPU).
    precision: "pallas_triton" only: the float32 inputs' dot precision, one of
      `pallas_triton.F32_PRECISIONS` ("bf16x3", "float32", "tf32x3", "tf32", "bf16"); None is
      its default, "bf16x3". Half-precision inputs ignore it. The other implementations
      take only None.
    interpret: Pallas implementations only. None: interpret mode where jax's default
      backend is not the implementation's device; a bool; for "pallas_mosaic_tpu" also a
      `pltpu.InterpretParams` (TPU interpret mode).

  Returns:
    `(out_BxHxLqxD, lse_BxHxLq)`, both float32 whatever q's dtype (the caller combines them
    with other float32 terms; cast afterwards).

  Raises:
    ValueError: on an unknown implementation, `precision` or `interpret` given to one that does not
      interpret, bad shapes or dtypes, or a block size the implementation cannot take; all
      before any kernel is built.
  """
  name = resolve_implementation(implementation)
  args = (
    q_BxHxLqxD,
    k_BxHxLkxD,
    v_BxHxLkxD,
    tile_ids_BxHxK,
    key_valid_BxLk,
    m0_BxHxLq,
    l0_BxHxLq,
    acc0_BxHxLqxD,
  )
  options = dict(block_size=block_size, scale=scale, eps=eps)
  if name in INTERPRETABLE:
    options["interpret"] = interpret
  elif interpret is not None:
    raise ValueError(
      f"interpret applies to {INTERPRETABLE} only, got {interpret=} for implementation={name!r}"
    )
  if name in TAKES_PRECISION:
    options["precision"] = precision
  elif precision is not None:
    raise ValueError(
      f"precision applies to {TAKES_PRECISION} only, got {precision=} for implementation={name!r}"
    )
  return sharding.run_per_shard(IMPLEMENTATIONS[name], args, options, kernel=name in INTERPRETABLE)
