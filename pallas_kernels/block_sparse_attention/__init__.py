"""Block-sparse attention from an initial online-softmax state: one op, peer implementations.

`base` states the contract (maths, input check, one-shot `jnp` reference, and
`Implementation`, the frozen dataclass every peer is, its options as fields); `api` is the
entry point, checking the arrays once and choosing among the peers by name or instance:

* `base.Reference`: the one-shot reference (tests);
* `xla_chunked.XlaChunked`: chunked pure `jnp` with a flash-style VJP (CPUs, and anywhere
  else);
* `pallas_triton.PallasTriton` with `pallas_triton_vjp` and `_common`: Pallas kernels
  lowered through Triton (GPU);
* `pallas_mosaic_tpu.PallasMosaicTpu` with `pallas_mosaic_tpu_vjp` and `_common`: Pallas
  kernels lowered through Mosaic, tiles streamed by DMA (TPU).

`index_views` builds the row (CSR) and column views of a tile pattern that the Pallas
kernels walk. The peers share the contract and its tests, not kernel code. A Mosaic GPU
implementation (the Triton lowering is deprecated from jax 0.11) would be one more peer,
`pallas_mosaic_gpu.py` with its `_vjp`, registered in `api.IMPLEMENTATIONS`.
"""

from pallas_kernels.block_sparse_attention.api import IMPLEMENTATIONS as IMPLEMENTATIONS
from pallas_kernels.block_sparse_attention.api import (
  block_sparse_attention as block_sparse_attention,
)
from pallas_kernels.block_sparse_attention.api import (
  resolve_implementation as resolve_implementation,
)
from pallas_kernels.block_sparse_attention.base import DEFAULT_EPS as DEFAULT_EPS
from pallas_kernels.block_sparse_attention.base import MASK_VALUE as MASK_VALUE
from pallas_kernels.block_sparse_attention.base import Implementation as Implementation
from pallas_kernels.block_sparse_attention.base import Reference as Reference
from pallas_kernels.block_sparse_attention.base import (
  block_sparse_attention_reference as block_sparse_attention_reference,
)
from pallas_kernels.block_sparse_attention.base import check_inputs as check_inputs
from pallas_kernels.block_sparse_attention.index_views import TileViews as TileViews
from pallas_kernels.block_sparse_attention.index_views import (
  build_tile_views as build_tile_views,
)
from pallas_kernels.block_sparse_attention.pallas_mosaic_tpu import (
  PallasMosaicTpu as PallasMosaicTpu,
)
from pallas_kernels.block_sparse_attention.pallas_triton import (
  DEFAULT_F32_PRECISION as DEFAULT_F32_PRECISION,
)
from pallas_kernels.block_sparse_attention.pallas_triton import F32_PRECISIONS as F32_PRECISIONS
from pallas_kernels.block_sparse_attention.pallas_triton import PallasTriton as PallasTriton
from pallas_kernels.block_sparse_attention.xla_chunked import XlaChunked as XlaChunked
