"""Pallas kernels for MRA's block-sparse attention, next to their pure-jnp peers.

The op lives in `pallas_kernels.block_sparse_attention` (contract, reference, chunked XLA,
Pallas Triton and Mosaic TPU implementations); its public names are re-exported here.
`pallas_kernels` depends on `jax` only (no Flax), so it can be used on its own.
"""

from pallas_kernels.block_sparse_attention import DEFAULT_EPS as DEFAULT_EPS
from pallas_kernels.block_sparse_attention import IMPLEMENTATIONS as IMPLEMENTATIONS
from pallas_kernels.block_sparse_attention import TileViews as TileViews
from pallas_kernels.block_sparse_attention import block_sparse_attention as block_sparse_attention
from pallas_kernels.block_sparse_attention import (
  block_sparse_attention_reference as block_sparse_attention_reference,
)
from pallas_kernels.block_sparse_attention import build_tile_views as build_tile_views
