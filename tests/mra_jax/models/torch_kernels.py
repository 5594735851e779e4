"""CPU torch stand-ins for the CUDA kernel transformers' MRA loads from the hub at run time.

Without that kernel transformers' `mra2_attention` returns zeros, so a parity test on CPU would
compare against zeros. These three functions compute what the kernel's entry points compute
(its CUDA source defines them: `index_max_cuda_kernel`, `mm_to_sparse_cuda_kernel`,
`sparse_dense_mm_cuda_kernel`), including the layout quirks a plain reading would miss:

- tiles are stored [key j, query i] (the transpose of the usual [query, key]);
- dense operands arrive block-major and transposed, [batch, blocks, dim, 32];
- `index_max` takes the per-query maximum over the selected tiles in an int32 atomic maximum
  of `trunc(1000 * x)`, starting from the int -1e8, and divides by 1000 on the way out, so
  its maximum moves in steps of 1e-3 and a query row without a tile gets -1e5.

`install(monkeypatch)` puts them where transformers looks for the kernel.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import types

import torch

_TRUNCATION = 1000
_EMPTY_MAX = -100_000_000  # the kernel's int initial value (-1e8), -1e5 after division


def _batch_index(indices):
  return torch.arange(indices.shape[0], device=indices.device)[:, None]


def mm_to_sparse(dense_A, dense_B, indices):
  """Selected tiles of A @ B^T: [b, Na, dim, 32] x [b, Nb, dim, 32] -> [b, K, 32 (B), 32 (A)]."""
  indices = indices.long()
  b_blocks = dense_B.shape[1]
  A_tiles = dense_A[_batch_index(indices), indices // b_blocks]  # [b, K, dim, 32]
  B_tiles = dense_B[_batch_index(indices), indices % b_blocks]
  return torch.einsum("bkdi,bkdj->bkji", A_tiles, B_tiles).contiguous()


def sparse_dense_mm(sparse_A, indices, dense_B, A_num_block):
  """Sum over tiles of tile^T-weighted B rows: -> [b, A_num_block, dim, 32].

  Tile k (row block r, column block c) adds `sum_j sparse_A[k, j, i] * B[c, :, j]` to the
  output column i of row block r, as the kernel's atomicAdd does.
  """
  indices = indices.long()
  batch, _, dim, block = dense_B.shape
  b_blocks = dense_B.shape[1]
  B_tiles = dense_B[_batch_index(indices), indices % b_blocks]  # [b, K, dim, 32 (j)]
  contrib = torch.einsum("bkdj,bkji->bkdi", B_tiles, sparse_A)  # [b, K, dim, 32 (i)]
  out = torch.zeros(batch, A_num_block, dim, block, dtype=contrib.dtype)
  rows = indices // b_blocks
  for bi in range(batch):
    out[bi].index_add_(0, rows[bi], contrib[bi])
  return out


def index_max(index_vals, indices, A_num_block, B_num_block):
  """Per-query maximum over the selected tiles, truncated to steps of 1e-3 as the kernel.

  Args:
    index_vals: [b, 32, K] float, each tile's per-query maximum.
    indices: [b, K] int tile ids.
    A_num_block: query blocks.
    B_num_block: key blocks.

  Returns:
    (max_vals [b, A_num_block * 32], max_vals_scatter [b, 32, K]).
  """
  indices = indices.long()
  batch, block, _ = index_vals.shape
  truncated = (index_vals * _TRUNCATION).to(torch.int32)  # C's (int) cast truncates to 0
  rows = indices // B_num_block  # [b, K]
  buffer = torch.full((batch, A_num_block, block), _EMPTY_MAX, dtype=torch.int32)
  src = truncated.transpose(1, 2)  # [b, K, 32]
  buffer.scatter_reduce_(1, rows[:, :, None].expand(-1, -1, block), src, reduce="amax")
  as_float = buffer.to(torch.float32) / _TRUNCATION
  max_vals = as_float.reshape(batch, A_num_block * block)
  scatter = as_float[_batch_index(indices), rows].transpose(1, 2).contiguous()  # [b, 32, K]
  return max_vals, scatter


def install(monkeypatch) -> None:
  """Makes transformers' MRA use these functions as its loaded kernel (for one test)."""
  from transformers.models.mra import modeling_mra

  kernel = types.SimpleNamespace(
    mm_to_sparse=mm_to_sparse, sparse_dense_mm=sparse_dense_mm, index_max=index_max
  )
  monkeypatch.setattr(modeling_mra, "mra_cuda_kernel", kernel)
