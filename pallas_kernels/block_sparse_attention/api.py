"""The block-sparse attention op's entry point: one function, implementations by name."""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses

import jax

from pallas_kernels.block_sparse_attention import (
  base,
  pallas_mosaic_tpu,
  pallas_triton,
  sharding,
  xla_chunked,
)

# Name -> the implementation with its default options. All are held to the same contract
# tests. A Mosaic GPU implementation ("pallas_mosaic_gpu": the Triton lowering is deprecated
# from jax 0.11) belongs here as one more peer; "auto" would then pick it on GPUs it supports.
IMPLEMENTATIONS: dict[str, base.Implementation] = {
  "reference": base.Reference(),
  "xla_chunked": xla_chunked.XlaChunked(),
  "pallas_triton": pallas_triton.PallasTriton(),
  "pallas_mosaic_tpu": pallas_mosaic_tpu.PallasMosaicTpu(),
}
# The names of those that take `precision=` (a float32 dot precision); the others compute
# float32 inputs at the platform's float32 dot precision and refuse one.
TAKES_PRECISION = tuple(name for name, impl in IMPLEMENTATIONS.items() if impl.TAKES_PRECISION)
# "auto" on each platform; xla_chunked anywhere else. Compile-only GPU devices say "gpu",
# lowering platforms and abstract devices "cuda" / "rocm".
_AUTO = {"gpu": "pallas_triton", "cuda": "pallas_triton", "rocm": "pallas_triton"}
_AUTO["tpu"] = "pallas_mosaic_tpu"


def platform_of(x: jax.Array) -> str:
  """The platform `x` lives on, as far as tracing can tell.

  A concrete array: its devices'. A traced one: the device kind of the mesh in sight (the
  mesh `x` is committed to, else the mesh context, as with compile-only devices on a mesh),
  else jax's default backend. A traced array placed on one device shows no device while
  tracing: a program compiled for another platform from there (ahead of time, on a
  single device) must name its implementation or put the mesh in sight.
  """
  if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
    return next(iter(x.sharding.device_set)).platform
  mesh = jax.typeof(x).sharding.mesh
  if mesh.empty:
    mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else mesh.abstract_device
  return device.platform if device is not None else jax.default_backend()


def resolve_implementation(
  implementation: str | base.Implementation, platform: str | None = None
) -> str:
  """The implementation name `implementation` stands for ("auto" made concrete).

  Args:
    implementation: "auto", a key of `IMPLEMENTATIONS`, or an implementation instance.
    platform: where "auto" runs ("gpu", "tpu", "cpu", ...); None: jax's default backend.

  Raises:
    ValueError: `implementation` is none of these.
  """
  if isinstance(implementation, base.Implementation):
    return implementation.NAME
  if implementation == "auto":
    return _AUTO.get(platform or jax.default_backend(), "xla_chunked")
  if not isinstance(implementation, str) or implementation not in IMPLEMENTATIONS:
    raise ValueError(
      f"implementation must be 'auto', one of {tuple(IMPLEMENTATIONS)} or a "
      f"base.Implementation, got {implementation=}"
    )
  return implementation


def _implementation(implementation, precision, q) -> base.Implementation:
  """The instance that runs: `implementation` resolved on q's platform, with `precision`."""
  if not isinstance(implementation, base.Implementation):
    platform = platform_of(q) if implementation == "auto" else None
    implementation = IMPLEMENTATIONS[resolve_implementation(implementation, platform)]
  if precision is None:
    return implementation
  if not implementation.TAKES_PRECISION:
    raise ValueError(
      f"precision applies to {TAKES_PRECISION} only, got {precision=} for "
      f"implementation={implementation.NAME!r}"
    )
  return dataclasses.replace(implementation, precision=precision)


def block_sparse_attention(
  q_BxHxLqxD: jax.Array,
  k_BxHkxLkxD: jax.Array,
  v_BxHkxLkxD: jax.Array,
  tile_ids_BxHkxK: jax.Array,
  key_valid_BxLk: jax.Array,
  m0_BxHxLq: jax.Array,
  l0_BxHxLq: jax.Array,
  acc0_BxHxLqxD: jax.Array,
  *,
  block_size: int,
  scale: float | None = None,
  eps: float = base.DEFAULT_EPS,
  causal: bool = False,
  implementation: str | base.Implementation = "auto",
  precision: str | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Block-sparse attention from an initial online-softmax state (maths in `base`).

  Differentiable in q, k, v, l0 and acc0; m0, tile_ids and key_valid get no gradient. The
  arrays are checked here, once, before the implementation (and any sharding) sees them.

  Args:
    q_BxHxLqxD: queries, float32 / bfloat16 / float16; Lq a multiple of `block_size`.
    k_BxHkxLkxD: keys, q's dtype; Lk a multiple of `block_size`. Hk may be a divisor of H
      (grouped-query attention: query head h uses kv head h // (H // Hk)).
    v_BxHkxLkxD: values, q's dtype, k's shape.
    tile_ids_BxHkxK: int flat tile ids `r * (Lk // block_size) + c`, sorted ascending and
      unique per (batch, kv head), shared by the kv head's query heads; rows may hold any
      number of tiles, including none.
    key_valid_BxLk: bool, False for padded keys (they get no weight).
    m0_BxHxLq: initial running maximum (-inf: empty state), cast to float32.
    l0_BxHxLq: initial normaliser on the scale of m0, cast to float32.
    acc0_BxHxLqxD: initial numerator on the scale of m0, cast to float32.
    block_size: tile side. "pallas_triton" takes 32 or 64, "pallas_mosaic_tpu" 32, 64 or
      128, "reference" and "xla_chunked" any size that divides the lengths.
    scale: logit scale; default `1 / sqrt(D)`.
    eps: added to the normaliser (the published code's 1e-6).
    causal: query r * bs + i attends key c * bs + j only if c * bs + j <= r * bs + i;
      needs Lq == Lk. Pass tiles with c <= r only: the kernels mask the tiles with c >= r,
      so a lower-triangular pattern pays for the mask on its diagonal tiles alone.
    implementation: "auto" ("pallas_triton" on GPU, "pallas_mosaic_tpu" on TPU,
      "xla_chunked" elsewhere, by `platform_of(q)`), a key of `IMPLEMENTATIONS` (its default
      options): "reference" (one shot of pure jnp, for tests), "xla_chunked" (chunked jnp
      with a flash-style VJP, for CPUs), "pallas_triton" (GPU) or "pallas_mosaic_tpu"
      (TPU); or an implementation with its own options, e.g.
      `pallas_triton.PallasTriton(precision="tf32x3", interpret=True)`.
    precision: for implementations that take one (`TAKES_PRECISION`: "pallas_triton"), the
      float32 inputs' dot precision, one of `pallas_triton.F32_PRECISIONS` ("bf16x3",
      "float32", "tf32x3", "tf32", "bf16"); it replaces the implementation's own. None keeps
      the implementation's (by default "bf16x3"). Half-precision inputs ignore it.

  Returns:
    `(out_BxHxLqxD, lse_BxHxLq)`, both float32 whatever q's dtype (the caller combines them
    with other float32 terms; cast afterwards).

  Raises:
    ValueError: on an unknown implementation, a `precision` for one that takes none, bad
      shapes or dtypes (Hk not dividing H, Lq != Lk with `causal`), or a block size the
      implementation cannot take; all before any kernel is built.
  """
  args = (
    q_BxHxLqxD,
    k_BxHkxLkxD,
    v_BxHkxLkxD,
    tile_ids_BxHkxK,
    key_valid_BxLk,
    m0_BxHxLq,
    l0_BxHxLq,
    acc0_BxHxLqxD,
  )
  run = _implementation(implementation, precision, q_BxHxLqxD)
  base.check_inputs(*args, block_size=block_size, implementation=run, causal=causal)
  scale = q_BxHxLqxD.shape[-1] ** -0.5 if scale is None else float(scale)
  options = dict(block_size=block_size, scale=scale, eps=float(eps), causal=causal)
  return sharding.run_per_shard(run, args, options)
