"""Weights between transformers' MRA state dicts and the NNX models, both ways.

The NNX modules mirror transformers' module tree (modeling.py), so a parameter's NNX path is
its transformers key with the leaf renamed: `kernel` -> `weight` (transposed: torch's Linear
stores [out, in]), `embedding` and LayerNorm's `scale` -> `weight`, `bias` -> `bias`. Nothing
here needs torch: tensors are numpy arrays (the readers in pretrained.py produce them).
"""
# pylint: disable=invalid-name

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flax import nnx

from mra_jax.models.modeling import POSITION_OFFSET, MraModel

# NNX leaf name -> (transformers leaf name, transposed?).
_LEAVES = {
  "kernel": ("weight", True),
  "embedding": ("weight", False),
  "scale": ("weight", False),
  "bias": ("bias", False),
}
# Encoder key prefixes: a checkpoint tensor under them that the model does not take means the
# checkpoint and config.json disagree (more layers, say), which must not pass silently.
_ENCODER_PREFIXES = ("embeddings.", "encoder.")
# Buffers transformers writes that hold no weights (position ids are recomputed).
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


class WeightsError(ValueError):
  """Checkpoint tensors that do not fit the model config.json describes (names file and key)."""


def transformers_key(path: tuple) -> tuple[str, bool]:
  """The transformers key of an NNX parameter path, and whether the array is transposed.

  Args:
    path: an NNX state path, e.g. `("mra", "encoder", "layer", 0, "attention", "self",
      "query", "kernel")`.

  Returns:
    e.g. `("mra.encoder.layer.0.attention.self.query.weight", True)`.
  """
  *modules, leaf = path
  name, transposed = _LEAVES[leaf]
  return ".".join([*map(str, modules), name]), transposed


def _encoder_prefix(model: nnx.Module) -> str:
  return "" if isinstance(model, MraModel) else "mra."


def _candidates(key: str, prefix: str) -> list[str]:
  """Where a key may sit in a checkpoint of another class of the family."""
  if prefix == "":  # a bare MraModel from a task checkpoint (keys under "mra.")
    return [key, "mra." + key]
  names = [key]
  if key.startswith(prefix):  # a task model from a bare MraModel checkpoint
    names.append(key[len(prefix) :])
  if key == "cls.predictions.bias":  # tied to the decoder's bias in transformers
    names.append("cls.predictions.decoder.bias")
  return names


def checkpoint_values(
  model: nnx.Module,
  tensors: Mapping[str, np.ndarray],
  *,
  source: str,
  fresh_prefixes: tuple[str, ...] = (),
) -> dict[tuple, np.ndarray]:
  """The checkpoint's value of each of `model`'s parameters, in NNX layout, checked.

  Args:
    model: an `MraModel` or task model; an abstract one (`nnx.eval_shape`) is enough.
    tensors: transformers key -> numpy array, as stored (any float dtype).
    source: the weights file, named in errors.
    fresh_prefixes: keys under these prefixes may be missing; those parameters are left out
      of the result, to keep a fresh initialisation (a new task head on a pretrained encoder).

  Returns:
    NNX parameter path -> numpy array of the parameter's shape (the stored dtype).

  Raises:
    WeightsError: a tensor the model needs is missing, a shape differs from the config's, or
      the checkpoint holds encoder tensors the model has no place for.
  """
  prefix = _encoder_prefix(model)
  values, used = {}, set()
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    key, transposed = transformers_key(path)
    found = next((k for k in _candidates(key, prefix) if k in tensors), None)
    if found is None:
      if key.startswith(fresh_prefixes):
        continue
      raise WeightsError(f"{source}: no tensor {key!r}, which {type(model).__name__} needs")
    array = np.asarray(tensors[found])
    shape = tuple(variable.get_value().shape)
    wanted = shape[::-1] if transposed else shape
    if array.shape != wanted:
      raise WeightsError(
        f"{source}: {found!r} has shape {array.shape}, but config.json implies {wanted}"
      )
    if not np.issubdtype(array.dtype, np.floating) and array.dtype.name != "bfloat16":
      raise WeightsError(f"{source}: {found!r} must be floating point; got {array.dtype}")
    values[path] = array.T if transposed else array
    used.add(found)
  for key in tensors:
    bare = key[4:] if key.startswith("mra.") else key
    if key not in used and bare.startswith(_ENCODER_PREFIXES) and bare not in _BUFFERS:
      raise WeightsError(
        f"{source}: tensor {key!r} has no place in a model of this config.json "
        f"(num_hidden_layers={model.config.num_hidden_layers})"
      )
  return values


def to_tensors(model: nnx.Module) -> dict[str, np.ndarray]:
  """transformers' state dict of `model` (numpy, the parameters' dtype), as transformers saves it.

  Tied weights are left out as transformers leaves them out (the decoder of a tied masked-LM
  head); the `position_ids` buffer transformers writes is included.
  """
  tensors = {}
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    key, transposed = transformers_key(path)
    array = np.asarray(variable[...])
    tensors[key] = np.ascontiguousarray(array.T if transposed else array)
  positions = model.config.max_position_embeddings
  position_ids = np.arange(positions, dtype=np.int64)[None, :] + POSITION_OFFSET
  tensors[_encoder_prefix(model) + "embeddings.position_ids"] = position_ids
  return tensors
