"""Token orders for images: row-major pixels <-> 2-D patches that fill MRA's blocks.

The published image and Pathfinder runs (`input_shape=[32, 32]`) reorder the tokens of
an image so that each run of 32 consecutive tokens is a 4-row x 8-column patch; MRA's
1-D blocks then pool 2-D neighbourhoods. These functions do that reordering and undo it.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import jax


def _check(x, input_shape, patch_shape):
  if len(input_shape) != 2 or len(patch_shape) != 2:
    raise ValueError(
      f"input_shape and patch_shape must be (rows, cols); got "
      f"input_shape={input_shape!r}, patch_shape={patch_shape!r}"
    )
  (rows, cols), (prows, pcols) = input_shape, patch_shape
  if rows % prows or cols % pcols:
    raise ValueError(
      f"input_shape must be divisible by patch_shape; got "
      f"input_shape={input_shape!r}, patch_shape={patch_shape!r}"
    )
  if x.ndim < 2 or x.shape[1] != rows * cols:
    raise ValueError(
      f"x must be [batch, rows*cols, ...] with rows*cols={rows * cols}; got x.shape={x.shape}"
    )


def to_patch_order(
  x_BxLx: jax.Array, input_shape: tuple[int, int], patch_shape: tuple[int, int] = (4, 8)
) -> jax.Array:
  """Row-major image tokens -> patch order (each patch's tokens contiguous).

  Args:
    x_BxLx: [B, rows*cols, ...] tokens (features, masks or ids) in row-major order.
    input_shape: (rows, cols) of the image.
    patch_shape: (rows, cols) of one patch; (4, 8) fills a 32-token block.

  Returns:
    The same tokens, [B, rows*cols, ...], patch after patch, row-major within a patch.
  """
  _check(x_BxLx, input_shape, patch_shape)
  (rows, cols), (pr, pc) = input_shape, patch_shape
  B, L, rest = x_BxLx.shape[0], x_BxLx.shape[1], x_BxLx.shape[2:]
  x = x_BxLx.reshape(B, rows // pr, pr, cols // pc, pc, *rest)
  return x.swapaxes(2, 3).reshape(B, L, *rest)


def from_patch_order(
  x_BxLx: jax.Array, input_shape: tuple[int, int], patch_shape: tuple[int, int] = (4, 8)
) -> jax.Array:
  """Inverse of `to_patch_order`: patch order -> row-major image tokens."""
  _check(x_BxLx, input_shape, patch_shape)
  (rows, cols), (pr, pc) = input_shape, patch_shape
  B, L, rest = x_BxLx.shape[0], x_BxLx.shape[1], x_BxLx.shape[2:]
  x = x_BxLx.reshape(B, rows // pr, cols // pc, pr, pc, *rest)
  return x.swapaxes(2, 3).reshape(B, L, *rest)
