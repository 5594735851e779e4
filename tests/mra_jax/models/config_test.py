"""MraModelConfig reads transformers' config.json and writes one back unchanged."""

from __future__ import annotations

import json
import re

import pytest

from mra_jax.models import ConfigError, MraModelConfig

# A config.json of the uw-madison/mra-base-4096-8-d3 shape as transformers 4.x wrote them,
# keys this port does not use (`torch_dtype`, `transformers_version`) included.
PUBLISHED = {
  "architectures": ["MraForMaskedLM"],
  "approx_mode": "full",
  "attention_probs_dropout_prob": 0.1,
  "block_per_row": 8,
  "bos_token_id": 0,
  "eos_token_id": 2,
  "hidden_act": "gelu",
  "hidden_dropout_prob": 0.1,
  "hidden_size": 768,
  "initial_prior_diagonal_n_blocks": 1,
  "initial_prior_first_n_blocks": 3,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 4096,
  "model_type": "mra",
  "num_attention_heads": 12,
  "num_hidden_layers": 12,
  "pad_token_id": 1,
  "position_embedding_type": "absolute",
  "torch_dtype": "float32",
  "transformers_version": "4.31.0",
  "type_vocab_size": 1,
  "vocab_size": 50265,
}


def test_reads_a_published_config_and_writes_it_back():
  config = MraModelConfig.from_dict(PUBLISHED)
  assert config.max_position_embeddings == 4096
  assert config.initial_prior_first_n_blocks == 3
  assert config.max_position_budget == 128 * 8
  assert config.num_labels == 2
  assert config.head_dim == 64
  assert config.logit_scale == pytest.approx(64**-0.5)
  # Unknown keys are kept verbatim; fields the file left out are written with their defaults.
  assert config.to_dict() == {**PUBLISHED, "tie_word_embeddings": True}
  hash(config)  # NNX keeps it as static metadata


def test_labels_round_trip():
  raw = {**PUBLISHED, "id2label": {"0": "neg", "1": "neu", "2": "pos"}}
  raw["label2id"] = {"neg": 0, "neu": 1, "pos": 2}
  config = MraModelConfig.from_dict(raw)
  assert config.num_labels == 3
  assert config.to_dict() == {**raw, "tie_word_embeddings": True}
  assert MraModelConfig.from_dict({**PUBLISHED, "num_labels": 5}).num_labels == 5
  assert config.replace(num_labels=4).id2label[-1] == (3, "LABEL_3")


def test_small_head_dims_take_transformers_scale():
  config = MraModelConfig(hidden_size=64, num_attention_heads=4)
  assert config.head_dim == 16
  assert config.logit_scale == pytest.approx(32**-0.5)


def test_budget_is_capped_at_the_grid():
  config = MraModelConfig(max_position_embeddings=64, block_per_row=4)
  assert config.max_position_budget == 4  # 2 x 2 blocks


@pytest.mark.parametrize(
  ("change", "message"),
  [
    ({"model_type": "bert"}, "model_type must be 'mra'; got 'bert'"),
    ({"hidden_act": "swish7"}, "hidden_act must be one of"),
    ({"approx_mode": "dense"}, "approx_mode must be 'full' or 'sparse'"),
    ({"block_per_row": 0}, "block_per_row must be an integer >= 1"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key' is not"),
    ({"is_decoder": True}, "is_decoder=True is not supported"),
    ({"id2label": {"1": "a"}}, "id2label ids must be 0..n-1"),
    ({"architectures": "MraModel"}, "architectures must be a list of names"),
  ],
)
def test_bad_values_name_the_file_and_key(change, message, tmp_path):
  path = tmp_path / "config.json"
  path.write_text(json.dumps({**PUBLISHED, **change}))
  with pytest.raises(ConfigError, match=re.escape(f"{path}: {message}")):
    MraModelConfig.from_json_file(path)
