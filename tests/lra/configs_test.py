"""Every config builds, with every registered attention; typos are rejected."""

import glob
import importlib
import os

import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from lra import models, train
from mra_jax import attentions

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASK_FILES = sorted(
  p
  for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
  if os.path.basename(p)[:-3] not in ("__init__", "common", "pathfinder_common")
)
REQUIRED_KEYS = (
  "attention",
  "attention_kwargs",
  "num_train_steps",
  "eval_every_steps",
  "checkpoint_every_steps",
  "seed",
  "data_dir",
  "batch_size",
  "learning_rate",
  "max_length",
)


def _module(path):
  return importlib.import_module(f"configs.{os.path.basename(path)[:-3]}")


def test_one_config_per_task():
  assert [os.path.basename(p)[:-3] for p in TASK_FILES] == sorted(
    [
      "listops",
      "text",
      "retrieval",
      "image",
      "pathfinder32",
      "pathfinder64",
      "pathfinder128",
      "pathfinder256",
    ]
  )


def _abstract_model(config):
  cfg = train.model_config(config)
  return nnx.eval_shape(lambda: models.build(cfg, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: os.path.basename(p))
def test_config_builds_with_every_attention(path):
  module = _module(path)
  assert "python -m lra.main --config=configs/" in module.__doc__
  for arg in (None, "protocol=lra", "smoke"):
    config = module.get_config(arg)
    for key in REQUIRED_KEYS:
      assert key in config
    assert config.task == os.path.basename(path)[:-3]
  config = module.get_config("protocol=lra")
  config.max_length = 256  # Abstract build only: the length just has to be legal.
  assert _abstract_model(config) is not None
  for name in attentions.names():
    for arg in (f"attention={name}", f"attention={name},protocol=lra"):
      config = module.get_config(arg)
      # Every knob of the config is one the registry knows (build() would reject others).
      assert set(config.attention_kwargs[name]) <= set(attentions.knob_defaults(name))
      assert train.model_config(config).attention == name


@pytest.mark.parametrize("name", attentions.names())
def test_every_attention_builds_into_the_encoder(name):
  from configs import listops  # pylint: disable=g-import-not-at-top

  config = listops.get_config(f"attention={name}")
  config.max_length = 256
  assert _abstract_model(config) is not None


def test_mra_paper_defaults():
  from configs import image, listops, text  # pylint: disable=g-import-not-at-top

  c = listops.get_config()
  assert (c.model.num_layers, c.model.embed_dim, c.model.num_heads, c.model.mlp_dim) == (
    2,
    64,
    2,
    128,
  )
  assert (c.batch_size, c.num_train_steps, c.optimizer.warmup_steps) == (32, 5000, 1000)
  assert c.optimizer.schedule == "one_cycle" and c.optimizer.weight_decay == 0.0
  assert c.attention_kwargs.mra2.initial_prior_first_n_blocks == 1
  assert text.get_config().attention_kwargs.mra2.initial_prior_diagonal_n_blocks == 1
  assert image.get_config().attention_kwargs.mra2_s.initial_prior_first_n_blocks == 0
  lra = listops.get_config("protocol=lra")
  assert (lra.model.num_layers, lra.model.embed_dim, lra.model.pooling) == (4, 512, "cls")


def test_bad_config_arguments_raise():
  from configs import listops  # pylint: disable=g-import-not-at-top

  with pytest.raises(ValueError, match="smok"):
    listops.get_config("smok")
  with pytest.raises(ValueError, match="protocol"):
    listops.get_config("protocol=google")
  with pytest.raises(ValueError, match="no 'cpu' variant"):
    _module(os.path.join(REPO, "configs", "text.py")).get_config("cpu")


def _parse(*argv):
  argv = ["prog", f"--config={REPO}/configs/listops.py:smoke", *argv]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
  )
  values(argv)
  return values.config


def test_command_line_overrides_and_typos():
  config = _parse(
    "--config.attention=softmax",
    "--config.model.num_layers=3",
    "--config.attention_kwargs.mra2.block_per_row=4",
  )
  assert config.attention == "softmax" and config.model.num_layers == 3
  assert config.attention_kwargs.mra2.block_per_row == 4
  for typo, wrong in (
    ("--config.atention=softmax", "atention"),
    ("--config.model.num_layer=3", "num_layer"),
    ("--config.optimizer.warmup=3", "warmup"),
  ):
    # ml_collections' locked config: "'atention' ... Did you mean "attention"".
    with pytest.raises((AttributeError, KeyError), match=wrong):
      _parse(typo)
  with pytest.raises(flags.IllegalFlagValueError):
    _parse("--config.batch_size=big")


def test_model_config_rejects_bad_values():
  from configs import listops  # pylint: disable=g-import-not-at-top

  config = listops.get_config("smoke")
  config.model.pooling = "max"
  with pytest.raises(ValueError, match="pooling='max'"):
    train.model_config(config)
  config = listops.get_config("smoke")
  config.attention = "no_such_attention"
  with pytest.raises(ValueError, match="no_such_attention"):
    train.model_config(config)
