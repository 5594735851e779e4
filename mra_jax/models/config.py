"""`MraModelConfig`: transformers' `MraConfig` as a frozen dataclass, read from config.json.

Field names and defaults are those of transformers' `MraConfig` (the `uw-madison/mra-base-512-4`
shape), so a config.json written by transformers reads here unchanged and the one written by
`to_dict` loads in transformers. Keys this port has no use for are kept verbatim in `extra`
so that a load/save round trip does not drop them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from mra_jax.checks import check_int

MODEL_TYPE = "mra"
# The activations transformers' ACT2FN offers that an MRA config may name (`hidden_act`).
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "tanh")
# transformers' MraSelfAttention pads head dims below one GPU warp (32) with zeros before the
# kernels, which also changes the logit scale to 1/sqrt(32); the port follows it.
MIN_HEAD_DIM = 32
# Published MRA tiles are 32 x 32 tokens; transformers' model has no knob for it.
BLOCK_SIZE = 32


class ConfigError(ValueError):
  """A config.json that this port cannot build a model from (names the file and key)."""


@dataclasses.dataclass(frozen=True)
class MraModelConfig:
  """The architecture of a pretrained MRA model, as transformers' `MraConfig` names it.

  Attributes (transformers' meanings): vocab_size, hidden_size, num_hidden_layers,
  num_attention_heads, intermediate_size, hidden_act, hidden_dropout_prob,
  attention_probs_dropout_prob (unused by MRA, kept for the round trip),
  max_position_embeddings (the position table has 2 more rows; position ids start at 2),
  type_vocab_size, initializer_range, layer_norm_eps, block_per_row, approx_mode,
  initial_prior_first_n_blocks, initial_prior_diagonal_n_blocks, pad_token_id,
  bos_token_id, eos_token_id, tie_word_embeddings.
  id2label: ((id, label), ...) of the classification heads; its length is `num_labels`.
  problem_type: transformers' loss choice for sequence classification, kept verbatim.
  architectures: the model classes config.json names ("MraForMaskedLM", ...).
  extra: every other config.json key as (key, JSON text), sorted; hashable on purpose, since
    NNX keeps the config as static metadata of the modules.
  """

  vocab_size: int = 50265
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 1
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-5
  block_per_row: int = 4
  approx_mode: str = "full"
  initial_prior_first_n_blocks: int = 0
  initial_prior_diagonal_n_blocks: int = 0
  pad_token_id: int | None = 1
  bos_token_id: int | None = 0
  eos_token_id: int | tuple[int, ...] | None = 2
  tie_word_embeddings: bool = True
  id2label: tuple[tuple[int, str], ...] = ((0, "LABEL_0"), (1, "LABEL_1"))
  problem_type: str | None = None
  architectures: tuple[str, ...] = ()
  extra: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    for name in (
      "vocab_size",
      "hidden_size",
      "num_hidden_layers",
      "num_attention_heads",
      "intermediate_size",
      "max_position_embeddings",
      "type_vocab_size",
      "block_per_row",
    ):
      check_int(name, getattr(self, name), minimum=1)
    check_int("initial_prior_first_n_blocks", self.initial_prior_first_n_blocks, minimum=0)
    check_int("initial_prior_diagonal_n_blocks", self.initial_prior_diagonal_n_blocks, minimum=0)
    if self.hidden_size % self.num_attention_heads:
      raise ConfigError(
        f"hidden_size must be divisible by num_attention_heads; got hidden_size="
        f"{self.hidden_size}, num_attention_heads={self.num_attention_heads}"
      )
    if self.hidden_act not in ACTIVATIONS:
      raise ConfigError(f"hidden_act must be one of {ACTIVATIONS}; got {self.hidden_act!r}")
    if self.approx_mode not in ("full", "sparse"):
      raise ConfigError(f"approx_mode must be 'full' or 'sparse'; got {self.approx_mode!r}")
    for name in ("hidden_dropout_prob", "layer_norm_eps", "initializer_range"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{name} must be a number >= 0; got {name}={value!r}")
    if not 0 <= self.hidden_dropout_prob < 1:
      raise ConfigError(f"hidden_dropout_prob must be in [0, 1); got {self.hidden_dropout_prob}")
    if not self.id2label:
      raise ConfigError("id2label must name at least one label; got an empty id2label")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def num_labels(self) -> int:
    return len(self.id2label)

  @property
  def logit_scale(self) -> float:
    """transformers' attention scale: 1/sqrt(head_dim), the head dim padded up to 32."""
    return 1.0 / math.sqrt(max(self.head_dim, MIN_HEAD_DIM))

  @property
  def max_position_budget(self) -> int:
    """transformers' tile budget per (batch, head), fixed by max_position_embeddings."""
    blocks = self.max_position_embeddings // BLOCK_SIZE
    return min(blocks * self.block_per_row, blocks * blocks)

  def replace(self, **changes: Any) -> MraModelConfig:
    """A copy with `changes` (e.g. `num_labels=3`, which rewrites `id2label`)."""
    num_labels = changes.pop("num_labels", None)
    if num_labels is not None:
      check_int("num_labels", num_labels, minimum=1)
      changes["id2label"] = tuple((i, f"LABEL_{i}") for i in range(num_labels))
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> MraModelConfig:
    """Reads transformers' config dict; `source` (a path) names the file in errors.

    Raises:
      ConfigError: a model_type other than "mra", a field of the wrong type or value, or a
        feature transformers' MRA has but this port does not (cross-attention, decoder use,
        non-absolute position embeddings).
    """
    model_type = raw.get("model_type")
    if model_type != MODEL_TYPE:
      raise ConfigError(f"{source}: model_type must be {MODEL_TYPE!r}; got {model_type!r}")
    for key, wanted in (
      ("add_cross_attention", False),
      ("is_decoder", False),
      ("position_embedding_type", "absolute"),
    ):
      if raw.get(key, wanted) != wanted:
        raise ConfigError(
          f"{source}: {key}={raw[key]!r} is not supported by this port (only {wanted!r})"
        )
    names = {f.name for f in dataclasses.fields(cls)} - {"id2label", "architectures", "extra"}
    kwargs = {k: raw[k] for k in names if k in raw}
    if isinstance(kwargs.get("eos_token_id"), list):
      # Kept hashable (see `extra`); written back as a JSON list.
      kwargs["eos_token_id"] = tuple(kwargs["eos_token_id"])
    architectures = raw.get("architectures") or ()
    if not isinstance(architectures, list | tuple) or not all(
      isinstance(a, str) for a in architectures
    ):
      raise ConfigError(f"{source}: architectures must be a list of names; got {architectures!r}")
    kwargs["architectures"] = tuple(architectures)
    kwargs["id2label"] = _read_labels(raw, source)
    skip = names | {"id2label", "label2id", "num_labels", "architectures", "model_type"}
    kwargs["extra"] = tuple(sorted((k, json.dumps(v)) for k, v in raw.items() if k not in skip))
    try:
      return cls(**kwargs)
    except ValueError as e:
      raise ConfigError(f"{source}: {e}") from None

  @classmethod
  def from_json_file(cls, path: str | os.PathLike) -> MraModelConfig:
    """Reads a config.json (errors name the file)."""
    path = os.fspath(path)
    try:
      with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
      raise ConfigError(f"{path}: must hold a JSON object; got {type(raw).__name__}")
    return cls.from_dict(raw, source=path)

  def to_dict(self) -> dict[str, Any]:
    """transformers' config.json contents (sorted keys, labels only when not the default)."""
    out = {k: json.loads(v) for k, v in self.extra}
    for f in dataclasses.fields(self):
      if f.name not in ("id2label", "architectures", "extra", "problem_type"):
        out[f.name] = getattr(self, f.name)
    if self.problem_type is not None:
      out["problem_type"] = self.problem_type
    out["model_type"] = MODEL_TYPE
    if self.architectures:
      out["architectures"] = list(self.architectures)
    if self.id2label != MraModelConfig.id2label:
      out["id2label"] = {str(i): label for i, label in self.id2label}
      out["label2id"] = {label: i for i, label in self.id2label}
    return dict(sorted(out.items()))


def _read_labels(raw: dict[str, Any], source: str) -> tuple[tuple[int, str], ...]:
  """id2label from config.json ({"0": "NEG", ...}) or, without it, num_labels."""
  if "id2label" in raw:
    id2label = raw["id2label"]
    try:
      labels = tuple(sorted((int(i), str(label)) for i, label in id2label.items()))
    except (AttributeError, ValueError, TypeError):
      raise ConfigError(f"{source}: id2label must map ids to names; got {id2label!r}") from None
    if [i for i, _ in labels] != list(range(len(labels))):
      raise ConfigError(f"{source}: id2label ids must be 0..n-1; got {sorted(id2label)}")
    return labels
  num_labels = raw.get("num_labels", 2)
  if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
    raise ConfigError(f"{source}: num_labels must be an integer >= 1; got {num_labels!r}")
  return tuple((i, f"LABEL_{i}") for i in range(num_labels))
