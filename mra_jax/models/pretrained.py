"""`from_pretrained` and `save_pretrained`: transformers' MRA snapshots on local disk.

A snapshot is a folder with config.json and the weights as model.safetensors (read with the
`safetensors` package's numpy API: the `models` extra), a sharded
model.safetensors.index.json, or pytorch_model.bin (read with torch: the `torch` extra).
`save_pretrained` writes config.json and model.safetensors that transformers loads.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mra_jax.models import convert, heads
from mra_jax.models.config import MraModelConfig
from mra_jax.models.modeling import MraModel, RuntimeOptions

ARCHITECTURES = {
  cls.__name__: cls
  for cls in (
    MraModel,
    heads.MraForMaskedLM,
    heads.MraForSequenceClassification,
    heads.MraForMultipleChoice,
    heads.MraForTokenClassification,
    heads.MraForQuestionAnswering,
  )
}
CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
# The parameters of each head, which a pretrained encoder may lack (new-head fine-tuning).
_HEAD_PREFIXES = {
  "MraModel": (),
  "MraForMaskedLM": ("cls.",),
  "MraForSequenceClassification": ("classifier.",),
  "MraForMultipleChoice": ("pre_classifier.", "classifier."),
  "MraForTokenClassification": ("classifier.",),
  "MraForQuestionAnswering": ("qa_outputs.",),
}


class CheckpointError(ValueError):
  """A snapshot folder that cannot be read as an MRA model (names the file and key)."""


def from_pretrained(
  folder: str | os.PathLike,
  *,
  dtype: jnp.dtype | None = None,
  param_dtype: jnp.dtype | None = None,
  budget: str = "max_position",
  impl: str = "auto",
  precision: str | None = None,
  mask_layout: str = "per_example",
  architecture: str | None = None,
  num_labels: int | None = None,
  seed: int = 0,
) -> nnx.Module:
  """Builds the model a local transformers MRA snapshot describes, weights converted.

  Args:
    folder: a folder with config.json and model.safetensors (or its sharded index, or
      pytorch_model.bin).
    dtype: compute dtype, e.g. `jnp.bfloat16` (None: float32).
    param_dtype: parameter storage dtype (None: `dtype`, else float32).
    budget: "max_position" (transformers' tile budget, fixed by max_position_embeddings) or
      "runtime" (block_per_row tiles per query block row of each input); see `RuntimeOptions`.
    impl: `mra_attention`'s implementation ("auto" picks the platform's).
    precision: `mra_attention`'s float32 dot precision on GPU kernels (None: default).
    mask_layout: "per_example" or "transformers" (its mask layout for padded batches, for
      parity tests; see `RuntimeOptions` and docs/models.md).
    architecture: build this class instead of config.json's `architectures` entry, e.g.
      "MraForSequenceClassification" on a masked-LM checkpoint; its head is then freshly
      initialised from `seed` when the checkpoint lacks it.
    num_labels: the classification heads' label count (rewrites config.json's id2label).
    seed: initialisation of freshly built heads and the dropout stream.

  Returns:
    The model (`MraModel`, `MraForMaskedLM`, ...) in eval mode (dropout off; `.train()`
    turns it on), called as `model(input_ids, attention_mask, token_type_ids)`.

  Raises:
    CheckpointError: no folder, no config.json or no weights file, an unknown architecture.
    ConfigError: a config.json of another model_type or with bad values.
    WeightsError: tensors missing or of shapes config.json does not imply.
    ImportError: the package the weights file needs (safetensors or torch) is missing.
  """
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise CheckpointError(f"{folder}: not a folder (expected a checkpoint snapshot)")
  config_path = os.path.join(folder, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise CheckpointError(f"{config_path}: missing (a snapshot needs config.json)")
  config = MraModelConfig.from_json_file(config_path)
  name = architecture
  if name is None:
    name = config.architectures[0] if config.architectures else "MraModel"
    where = f"{config_path}: architectures"
  else:
    where = "architecture"
  if name not in ARCHITECTURES:
    raise CheckpointError(f"{where} names {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
  changes = {"architectures": (name,)}
  if num_labels is not None:
    changes["num_labels"] = num_labels
  config = config.replace(**changes)
  options = RuntimeOptions(budget=budget, impl=impl, precision=precision, mask_layout=mask_layout)
  tensors, weights_path = read_weights(folder)
  spec = _ModelSpec(
    ARCHITECTURES[name], config, dtype, param_dtype or dtype or jnp.float32, options
  )
  fresh_ok = _HEAD_PREFIXES[name] if architecture is not None else ()
  model = _build(spec, jax.random.key(seed), tensors, source=weights_path, fresh_prefixes=fresh_ok)
  model.eval()
  return model


def save_pretrained(model: nnx.Module, folder: str | os.PathLike) -> None:
  """Writes config.json and model.safetensors that transformers' from_pretrained loads.

  Args:
    model: a model of this package (`MraModel`, `MraForMaskedLM`, ...).
    folder: created if missing; existing config.json / model.safetensors are overwritten.
  """
  name = type(model).__name__
  if name not in ARCHITECTURES:
    raise ValueError(f"model must be one of {sorted(ARCHITECTURES)}; got {name}")
  save_file = _safetensors_numpy("writing model.safetensors").save_file
  folder = os.fspath(folder)
  os.makedirs(folder, exist_ok=True)
  tensors = convert.to_tensors(model)
  config = model.config.replace(architectures=(name,))
  raw = config.to_dict()
  # transformers' record of the stored dtype (that of the word embeddings, as every weight's).
  word_embeddings = next(a for k, a in tensors.items() if k.endswith("word_embeddings.weight"))
  raw["dtype"] = np.dtype(word_embeddings.dtype).name
  raw.pop("torch_dtype", None)
  with open(os.path.join(folder, CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(dict(sorted(raw.items())), f, indent=2)
    f.write("\n")
  # transformers refuses safetensors files without this metadata entry.
  save_file(tensors, os.path.join(folder, SAFETENSORS_FILE), metadata={"format": "pt"})


@dataclasses.dataclass(frozen=True)
class _ModelSpec:
  """Everything a model's constructor takes but the random seed (hashable: a jit key)."""

  cls: type
  config: MraModelConfig
  dtype: Any
  param_dtype: Any
  options: RuntimeOptions

  def build(self, key: jax.Array) -> nnx.Module:
    return self.cls(
      self.config,
      rngs=nnx.Rngs(key),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      options=self.options,
    )


def _build(spec: _ModelSpec, key: jax.Array, tensors, *, source, fresh_prefixes) -> nnx.Module:
  """The model with the checkpoint's parameters, without drawing random ones it would discard.

  The model is laid out abstractly first; the checkpoint fills its parameters, and one
  compiled initialisation computes only the rest (the dropout stream and any fresh head),
  which at full size saves drawing ~125M random numbers and holding them beside the weights.
  """
  abstract = nnx.eval_shape(lambda: spec.build(key))
  loaded = convert.checkpoint_values(
    abstract, tensors, source=source, fresh_prefixes=fresh_prefixes
  )
  graphdef, state = nnx.split(abstract)
  flat = nnx.to_flat_state(state)
  rest = tuple(path for path, _ in flat if path not in loaded)
  # The initial state depends on neither the runtime options nor the architectures entry;
  # leaving them out of the jit key lets loads that differ only there share one compile (the
  # budget rule stays: it decides which configs the constructor accepts).
  init_spec = dataclasses.replace(
    spec,
    options=RuntimeOptions(budget=spec.options.budget),
    config=spec.config.replace(architectures=()),
  )
  fresh = dict(zip(rest, _initial_values(init_spec, rest, key)))
  values = [
    (
      path,
      var.replace(
        jnp.asarray(loaded[path], var.get_value().dtype) if path in loaded else fresh[path]
      ),
    )
    for path, var in flat
  ]
  return nnx.merge(graphdef, nnx.from_flat_state(values))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _initial_values(spec: _ModelSpec, paths: tuple, key: jax.Array) -> list[jax.Array]:
  """The freshly initialised values of the state at `paths` (XLA drops the other draws)."""
  flat = dict(nnx.to_flat_state(nnx.state(spec.build(key))))
  return [flat[path].get_value() for path in paths]


def read_weights(folder: str) -> tuple[dict[str, np.ndarray], str]:
  """The snapshot's tensors as numpy arrays, and the path to name in errors.

  model.safetensors is preferred, then its sharded index, then pytorch_model.bin.
  """
  path = os.path.join(folder, SAFETENSORS_FILE)
  if os.path.isfile(path):
    return _read_safetensors(path), path
  path = os.path.join(folder, SAFETENSORS_INDEX_FILE)
  if os.path.isfile(path):
    return _read_safetensors_index(path), path
  path = os.path.join(folder, TORCH_FILE)
  if os.path.isfile(path):
    return _read_torch(path), path
  raise CheckpointError(
    f"{folder}: no weights (expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} or {TORCH_FILE})"
  )


def _safetensors_numpy(purpose: str):
  try:
    from safetensors import numpy as safetensors_numpy  # an optional extra
  except ImportError:
    raise ImportError(
      f"{purpose} needs the safetensors package: pip install 'mra_jax[models]'"
    ) from None
  return safetensors_numpy


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  load_file = _safetensors_numpy(f"reading {path}").load_file
  try:
    return load_file(path)
  except Exception as e:  # safetensors raises its own error types for a damaged file
    raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _read_safetensors_index(path: str) -> dict[str, np.ndarray]:
  with open(path, encoding="utf-8") as f:
    index = json.load(f)
  weight_map = index.get("weight_map") if isinstance(index, dict) else None
  if not isinstance(weight_map, dict):
    raise CheckpointError(f"{path}: weight_map must map tensor names to shard files")
  tensors = {}
  for shard in sorted(set(weight_map.values())):
    shard_path = os.path.join(os.path.dirname(path), shard)
    if not os.path.isfile(shard_path):
      raise CheckpointError(f"{path}: weight_map names {shard!r}, which is missing")
    tensors.update(_read_safetensors(shard_path))
  return tensors


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # an optional extra
  except ImportError:
    raise ImportError(
      f"reading {path} needs torch: pip install 'mra_jax[torch]' "
      f"(or save the checkpoint as {SAFETENSORS_FILE}, which needs no torch)"
    ) from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch's unpickler raises many types for a bad file
    raise CheckpointError(f"{path}: not a readable torch state dict ({e})") from None
  if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
    raise CheckpointError(f"{path}: must hold a state dict of tensors")
  # numpy has no bfloat16 of torch's: widen it (exact); the model casts to its own dtype.
  return {
    k: (v.float() if v.dtype == torch.bfloat16 else v).numpy(force=True) for k, v in state.items()
  }
