"""Every config builds, with every registered attention; typos are rejected."""

import glob
import importlib
import os

import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from lra import models, train
from lra.data import tasks
from mra_jax import attentions

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASK_FILES = sorted(
  p
  for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
  if os.path.basename(p)[:-3] not in ("__init__", "common", "pathfinder_common")
)


def _module(path):
  return importlib.import_module(f"configs.{os.path.basename(path)[:-3]}")


def test_one_config_per_task():
  assert [os.path.basename(p)[:-3] for p in TASK_FILES] == sorted(tasks.TASKS)


def _abstract_model(config):
  cfg = train.model_config(config)
  return cfg, nnx.eval_shape(lambda: models.build(cfg, rngs=nnx.Rngs(0)))


def _check_shapes(config):
  """The abstract model has the config's depth, widths and the task's vocabulary and classes."""
  cfg, model = _abstract_model(config)
  spec = tasks.get_task(config.task)
  m = config.model
  assert len(model.encoder.blocks) == m.num_layers
  assert model.encoder.embed.embedding.shape == (spec.vocab_size, m.embed_dim)
  assert model.encoder.blocks[0].attention.query.kernel.shape == (m.embed_dim, m.qkv_dim)
  assert model.encoder.blocks[0].mlp_in.kernel.shape == (m.embed_dim, m.mlp_dim)
  assert model.head.out.kernel.shape == (m.classifier_hidden[-1], spec.num_classes)
  assert isinstance(model.encoder.blocks[0].attention.core, attentions.module_class(cfg.attention))
  assert model.encoder.position_LxE.shape == (cfg.sequence_length, m.embed_dim)


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: os.path.basename(p))
def test_config_builds_with_every_attention(path):
  module = _module(path)
  assert "python -m lra.main --config=configs/" in module.__doc__
  task = os.path.basename(path)[:-3]
  for arg in (None, "protocol=lra", "smoke"):
    config = module.get_config(arg)
    # The protocols and variants fill every required key with a value of its type.
    for key in ("max_length", "batch_size", "eval_batch_size", "num_train_steps"):
      assert isinstance(config[key], int) and config[key] >= 1, (arg, key)
    train.optimizer_config(config)  # Raises on a bad optimizer block.
  for arg in (None, "protocol=lra"):
    config = module.get_config(arg)
    config.max_length = 256  # Abstract build only: the length just has to be legal.
    config.token_order = "row_major"
    _check_shapes(config)
  for name in attentions.names():
    for arg in (f"attention={name}", f"attention={name},protocol=lra"):
      config = module.get_config(arg)
      cfg = train.model_config(config)
      assert cfg.attention == name and cfg.num_classes == tasks.get_task(task).num_classes
      # The knobs handed to the attention are the registry's defaults and this task's.
      assert cfg.attention_kwargs == config.attention_kwargs[name].to_dict()
      assert set(cfg.attention_kwargs) <= set(attentions.knob_defaults(name))


@pytest.mark.parametrize("name", attentions.names())
def test_every_attention_builds_into_the_encoder(name):
  from configs import listops  # pylint: disable=g-import-not-at-top

  config = listops.get_config(f"attention={name}")
  config.max_length = 256
  _check_shapes(config)


def test_lra_protocol_model_differs_where_the_papers_differ():
  from configs import retrieval  # pylint: disable=g-import-not-at-top

  config = retrieval.get_config("protocol=lra,attention=softmax")
  config.max_length = 64
  cfg, model = _abstract_model(config)
  # Two towers, [u, v] head, CLS token (one more position).
  assert cfg.dual_input and model.head.hidden[0].kernel.shape == (2 * 128, 512)
  assert model.encoder.cls_E.shape == (128,) and cfg.sequence_length == 65


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
  config = listops.get_config("smoke")
  config.optimizer.schedule = "rsqrt"  # cycle_momentum is still on: one_cycle only.
  with pytest.raises(ValueError, match="cycle_momentum"):
    train.optimizer_config(config)


def test_protocol_overrides_name_declared_keys_only():
  from configs import common  # pylint: disable=g-import-not-at-top

  base = {
    "max_length": 64,
    "batch_size": 8,
    "learning_rate": 1e-3,
    "num_train_steps": 10,
    "eval_every_steps": 5,
    "num_eval_batches": 1,
    "optimizer.schedule": "one_cycle",
    "optimizer.warmup_steps": 2,
  }
  c = common.make_config("listops", None, mra=base, lra=base, attention_overrides={})
  assert c.eval_batch_size == 8  # Defaults to batch_size.
  with pytest.raises(KeyError, match="model.num_layer"):
    common.make_config(
      "listops", None, mra={**base, "model.num_layer": 3}, lra=base, attention_overrides={}
    )
  unset = {k: v for k, v in base.items() if k != "optimizer.warmup_steps"}
  with pytest.raises(ValueError, match="optimizer.warmup_steps"):
    common.make_config("listops", None, mra=unset, lra=base, attention_overrides={})
