"""Pallas kernels for MRA's block-sparse attention, next to their pure-jnp peers.

The op lives in `pallas_kernels.block_sparse_attention` (contract, reference, chunked XLA,
Pallas Triton and Mosaic TPU implementations); its public names are re-exported here.
The re-exported function shadows the subpackage as an attribute, so reach the package's
modules with `from pallas_kernels.block_sparse_attention import api, base, ...` (not
`import pallas_kernels.block_sparse_attention as ...`, which gives the function).
`pallas_kernels` depends on `jax` only (no Flax), so it can be used on its own.
"""

from pallas_kernels.block_sparse_attention import DEFAULT_EPS as DEFAULT_EPS
from pallas_kernels.block_sparse_attention import DEFAULT_F32_PRECISION as DEFAULT_F32_PRECISION
from pallas_kernels.block_sparse_attention import F32_PRECISIONS as F32_PRECISIONS
from pallas_kernels.block_sparse_attention import IMPLEMENTATIONS as IMPLEMENTATIONS
from pallas_kernels.block_sparse_attention import Implementation as Implementation
from pallas_kernels.block_sparse_attention import PallasMosaicTpu as PallasMosaicTpu
from pallas_kernels.block_sparse_attention import PallasTriton as PallasTriton
from pallas_kernels.block_sparse_attention import Reference as Reference
from pallas_kernels.block_sparse_attention import TileViews as TileViews
from pallas_kernels.block_sparse_attention import XlaChunked as XlaChunked
from pallas_kernels.block_sparse_attention import block_sparse_attention as block_sparse_attention
from pallas_kernels.block_sparse_attention import (
  block_sparse_attention_reference as block_sparse_attention_reference,
)
from pallas_kernels.block_sparse_attention import build_tile_views as build_tile_views
