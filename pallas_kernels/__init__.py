"""Pallas kernels for MRA's block-sparse attention, each next to its pure-jnp reference.

`pallas_kernels` depends on `jax` only (no Flax), so it can be used on its own.
"""

from pallas_kernels.block_sparse_attention import DEFAULT_EPS as DEFAULT_EPS
from pallas_kernels.block_sparse_attention import block_sparse_attention as block_sparse_attention
from pallas_kernels.block_sparse_attention import (
  block_sparse_attention_reference as block_sparse_attention_reference,
)
from pallas_kernels.indexing import TileViews as TileViews
from pallas_kernels.indexing import build_tile_views as build_tile_views
