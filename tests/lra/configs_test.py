"""Every config builds, with every registered attention; typos are rejected."""

import glob
import importlib
import os
import re
import sys

import pytest
from flax import nnx

from lra import models, run_config
from lra.data import tasks
from mra_jax import attentions

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASK_FILES = sorted(
  p
  for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
  if os.path.basename(p)[:-3] not in ("__init__", "common", "pathfinder_common")
)


# The classification tasks (the LM task's config, with its causal attentions only, is
# tested in lm_model_test.py).
LRA_FILES = [p for p in TASK_FILES if os.path.basename(p) != "lm.py"]


def _module(path):
  return importlib.import_module(f"configs.{os.path.basename(path)[:-3]}")


def test_one_config_per_task():
  assert [os.path.basename(p)[:-3] for p in TASK_FILES] == sorted(tasks.TASKS)


def _abstract_model(config):
  cfg = run_config.from_config_dict(config).model
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


def _documented_args(module) -> list[str]:
  """The `:ARGS` of every `--config=configs/<task>.py:ARGS` in a config file's docstring."""
  return re.findall(r"--config=configs/\w+\.py:(\S+)", module.__doc__)


@pytest.mark.parametrize("path", LRA_FILES, ids=lambda p: os.path.basename(p))
def test_config_builds_with_every_attention(path):
  module = _module(path)
  task = os.path.basename(path)[:-3]
  # The commands the file documents use arguments it takes.
  for arg in _documented_args(module):
    run_config.from_config_dict(module.get_config(arg))
  for arg in (None, "protocol=lra", "smoke"):
    run = run_config.from_config_dict(module.get_config(arg))
    assert run.task == task and run.model.num_classes == tasks.get_task(task).num_classes
  for arg in (None, "protocol=lra"):
    config = module.get_config(arg)
    config.max_length = 256  # Abstract build only: the length just has to be legal.
    config.token_order = "row_major"
    _check_shapes(config)
  for name in attentions.names():
    for arg in (f"attention={name}", f"attention={name},protocol=lra"):
      config = module.get_config(arg)
      run = run_config.from_config_dict(config)
      # The config holds the chosen attention's knobs only, each settable, and hands them on.
      assert sorted(config.attention_kwargs) == sorted(attentions.knob_defaults(name))
      assert run.model.attention == name
      assert run.model.attention_knobs == attentions.make_knobs(
        name, **config.attention_kwargs.to_dict()
      )


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: os.path.basename(p))
def test_task_knob_settings_name_real_knobs(path):
  """A task's per-attention settings apply only when that attention is chosen: each must
  name a knob of its attention, or it would be silently ignored."""
  module = _module(path)
  settings = (
    getattr(module, "ATTENTION", None) or sys.modules["configs.pathfinder_common"].ATTENTION
  )
  for name, knob_values in settings.items():
    assert set(knob_values) <= set(attentions.knob_defaults(name)), (name, knob_values)


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
  assert c.attention_kwargs.initial_prior_first_n_blocks == 1
  assert text.get_config().attention_kwargs.initial_prior_diagonal_n_blocks == 1
  assert image.get_config("attention=mra2_s").attention_kwargs.initial_prior_first_n_blocks == 0
  lra = listops.get_config("protocol=lra")
  assert (lra.model.num_layers, lra.model.embed_dim, lra.model.pooling) == (4, 512, "cls")


def test_bad_config_arguments_raise():
  from configs import listops  # pylint: disable=g-import-not-at-top

  with pytest.raises(ValueError, match="'smok' \\(did you mean 'smoke'\\?\\)"):
    listops.get_config("smok")
  with pytest.raises(ValueError, match="protocol='google'"):
    listops.get_config("protocol=google")
  with pytest.raises(ValueError, match="did you mean 'softmax'"):
    listops.get_config("attention=sofmax")
  with pytest.raises(ValueError, match="no 'cpu' variant"):
    _module(os.path.join(REPO, "configs", "text.py")).get_config("cpu")


def test_none_default_knobs_are_settable_and_typed():
  """Knobs whose default is None (MRA's num_blocks, precision) are typed placeholders, so the
  command line can set them, and a wrong type is refused."""
  from configs import listops  # pylint: disable=g-import-not-at-top

  config = listops.get_config("smoke")
  assert config.attention_kwargs.num_blocks is None
  config.attention_kwargs.num_blocks = 12
  config.attention_kwargs.precision = "float32"
  run = run_config.from_config_dict(config)
  assert run.attention_kwargs.num_blocks == 12 and run.attention_kwargs.precision == "float32"
  with pytest.raises(TypeError):
    config.attention_kwargs.num_blocks = "many"


def test_typed_config_rejects_bad_values():
  from configs import listops  # pylint: disable=g-import-not-at-top

  for key, value, message in (
    ("model.pooling", "max", "pooling='max'"),
    ("batch_size", -1, "batch_size=-1"),
    ("optimizer.schedule", "rsqrt", "cycle_momentum"),
    ("attention_kwargs.block_size", 24, "block_size"),
    ("compute_dtype", "float64", "compute_dtype='float64'"),
  ):
    config = listops.get_config("smoke")
    node, *path = [config, *key.split(".")]
    for part in path[:-1]:
      node = node[part]
    node[path[-1]] = value
    with pytest.raises(ValueError, match=re.escape(message)):
      run_config.from_config_dict(config)


def test_record_round_trips():
  from configs import listops  # pylint: disable=g-import-not-at-top

  run = run_config.from_config_dict(listops.get_config("cpu"))
  assert run_config.from_config_dict(run.record()) == run
  assert run.record()["attention_kwargs"]["block_per_row"] == 2  # the :cpu variant's
  assert "approx_mode" not in run.record()["attention_kwargs"]  # pinned by mra2


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
  assert run_config.from_config_dict(c).eval_batch_size == 8  # Defaults to batch_size.
  with pytest.raises(KeyError, match="model.num_layer"):
    common.make_config(
      "listops", None, mra={**base, "model.num_layer": 3}, lra=base, attention_overrides={}
    )
  unset = {k: v for k, v in base.items() if k != "optimizer.warmup_steps"}
  with pytest.raises(ValueError, match="optimizer.warmup_steps"):
    common.make_config("listops", None, mra=unset, lra=base, attention_overrides={})
