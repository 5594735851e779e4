"""End-to-end harness runs on tiny data: every task, resume, NaN stop, data parallel."""

import dataclasses
import json
import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lra import checkpoints, inputs, provenance, reporting, run_config, train
from lra.data import builders, digests, errors, pipeline, prepare_lib

from .data import digests_test  # pylint: disable=relative-beyond-top-level

NUM_TEST = 16  # Test examples of every tiny task (tests/lra/conftest.py).


def _train(config, workdir: str) -> dict:
  return train.train_and_evaluate(run_config.from_config_dict(config), workdir)


def tiny_config(task: str, data_dir: str, attention: str = "softmax", **overrides):
  """A 1-layer, 16-wide model on 64 tokens, 4 steps of batch 8 (2 per simulated device)."""
  module = __import__(f"configs.{task}", fromlist=["get_config"])
  c = module.get_config(f"attention={attention}")
  c.data_dir = data_dir
  c.max_length = 64
  c.token_order = "row_major"
  c.batch_size = c.eval_batch_size = 8
  c.num_train_steps = 4
  c.eval_every_steps = c.checkpoint_every_steps = 2
  c.log_every_steps = 1
  c.num_eval_batches = 1
  c.learning_rate = 1e-3
  c.optimizer.warmup_steps = 1
  c.grad_accum_steps = 1
  c.plot = False
  c.check_memory = False
  c.model.update(
    num_layers=1, embed_dim=16, qkv_dim=16, num_heads=2, mlp_dim=32, classifier_hidden=(16,)
  )
  if c.model.pooling == "cls":
    c.model.classifier_hidden = (16, 8) if task == "retrieval" else (16,)
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


_slow = pytest.mark.slow


@pytest.mark.parametrize(
  "task,protocol",
  [
    # The fast tier: generated tokens and bytes; pairs, pixels in bfloat16 and the other
    # tasks in the slow tier.
    ("listops", "mra"),
    ("text", "lra"),
    pytest.param("retrieval", "mra", marks=_slow),
    pytest.param("pathfinder128", "mra", marks=_slow),
    pytest.param("image", "lra", marks=_slow),
    pytest.param("pathfinder32", "mra", marks=_slow),
    pytest.param("pathfinder64", "lra", marks=_slow),
    pytest.param("pathfinder256", "lra", marks=_slow),
  ],
)
def test_every_task_trains_evaluates_and_reports(task, protocol, prepared, tmp_path):
  config = tiny_config(task, prepared(task), protocol=protocol)
  if protocol == "lra":  # The LRA sizes, shrunk: CLS pooling, sinusoidal/learned, rsqrt/cos.
    module = __import__(f"configs.{task}", fromlist=["get_config"])
    lra_cfg = module.get_config("protocol=lra,attention=softmax")
    config.model.pooling = lra_cfg.model.pooling
    config.model.positions = lra_cfg.model.positions
    config.model.retrieval_interaction = lra_cfg.model.retrieval_interaction
    config.optimizer = lra_cfg.optimizer
    config.optimizer.warmup_steps = 1
  if task == "pathfinder128":
    config.compute_dtype = "bfloat16"
  results = _train(config, str(tmp_path))
  num_test = 48 if task == "text" else NUM_TEST
  assert results["num_test_examples"] == num_test
  # An accuracy over the whole test split is a count of right answers over its size.
  correct = results["test_accuracy"] * num_test
  assert correct == pytest.approx(round(correct), abs=1e-6)
  assert results["num_devices"] == 4
  events = reporting.read_metrics(str(tmp_path))
  splits = [e["split"] for e in events]
  assert splits.count("train") == 4 and splits.count("validation") == 2
  assert splits[-1] == "test"
  assert all(np.isfinite(e["loss"]) and {"step", "accuracy"} <= set(e) for e in events)
  assert events[-1]["accuracy"] == results["test_accuracy"]
  with open(tmp_path / "results.json") as f:
    stored = json.load(f)
  assert stored["test_accuracy"] == results["test_accuracy"]
  # Only the chosen attention's knobs are recorded, here and in the workdir stamp.
  assert stored["config"]["attention_kwargs"] == {"is_causal": False}
  with open(tmp_path / checkpoints.CONFIG_FILE) as f:
    assert stored["config"] == json.load(f)
  assert os.listdir(tmp_path / "tensorboard")


def _final_params(workdir):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "meta"))
  step = mngr.latest_step()
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  mngr.close()
  return step, state.state["params"]


def _loss_events(workdir):
  return [
    (e["step"], e["split"], e["loss"], e["accuracy"]) for e in reporting.read_metrics(workdir)
  ]


class _Crash(Exception):
  pass


def test_resume_after_crash_is_bit_identical(prepared, tmp_path, monkeypatch):
  config = tiny_config(
    "listops",
    prepared("listops"),
    num_train_steps=7,
    checkpoint_every_steps=3,
    eval_every_steps=2,
    grad_accum_steps=2,
  )
  config.model.dropout_rate = 0.1
  straight = str(tmp_path / "straight")
  expected = _train(config, straight)

  crashed = str(tmp_path / "crashed")
  original_write = reporting.MetricsWriter.write

  def write_then_crash(self, step, split, **values):
    original_write(self, step, split, **values)
    if step == 5 and split == "train":  # After checkpoint 3, the best model at 4, metrics.
      raise _Crash()

  monkeypatch.setattr(reporting.MetricsWriter, "write", write_then_crash)
  with pytest.raises(_Crash):
    _train(config, crashed)
  monkeypatch.setattr(reporting.MetricsWriter, "write", original_write)
  resumed = _train(config, crashed)

  step_a, params_a = _final_params(straight)
  step_b, params_b = _final_params(crashed)
  assert step_a == step_b == 7
  jax.tree.map(
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params_a, params_b
  )
  assert _loss_events(straight) == _loss_events(crashed)
  for key in ("test_accuracy", "test_loss", "best_step", "best_validation_accuracy"):
    assert expected[key] == resumed[key]
  # Rerunning a finished run trains and evaluates nothing, and writes nothing.
  before = {p: os.path.getmtime(os.path.join(crashed, p)) for p in os.listdir(crashed)}
  tensorboard_files = os.listdir(os.path.join(crashed, reporting.TENSORBOARD_DIR))
  again = _train(config, crashed)
  assert again["already_complete"] and again["steps_this_session"] == 0
  assert again["test_accuracy"] == expected["test_accuracy"]
  assert {p: os.path.getmtime(os.path.join(crashed, p)) for p in os.listdir(crashed)} == before
  assert os.listdir(os.path.join(crashed, reporting.TENSORBOARD_DIR)) == tensorboard_files
  assert _loss_events(straight) == _loss_events(crashed)


def test_other_config_is_refused_before_anything_is_written(prepared, tmp_path):
  config = tiny_config("listops", prepared("listops"))
  checkpoints.store_config(str(tmp_path), run_config.from_config_dict(config))
  config.learning_rate = 0.5
  with pytest.raises(checkpoints.ConfigMismatchError, match=r"learning_rate: stored 0.001"):
    _train(config, str(tmp_path))
  assert os.listdir(tmp_path) == [checkpoints.CONFIG_FILE]


def test_the_stamp_holds_the_chosen_attentions_knobs(prepared, tmp_path):
  config = tiny_config("listops", prepared("listops"), "mra2", num_train_steps=2)
  config.attention_kwargs.block_per_row = 2
  _train(config, str(tmp_path))
  with open(tmp_path / checkpoints.CONFIG_FILE) as f:
    stamp = json.load(f)
  assert stamp["attention_kwargs"] == config.attention_kwargs.to_dict()
  assert _train(config, str(tmp_path))["already_complete"]
  # A stamp written when the config held every attention's block still matches.
  stamp["attention_kwargs"] = {"mra2": stamp["attention_kwargs"], "softmax": {"made_up": 1}}
  with open(tmp_path / checkpoints.CONFIG_FILE, "w") as f:
    json.dump(stamp, f)
  checkpoints.check_config(str(tmp_path), run_config.from_config_dict(config))
  # The chosen attention's own knob refuses, naming the key.
  config.attention_kwargs.block_per_row = 4
  with pytest.raises(
    checkpoints.ConfigMismatchError, match=r"attention_kwargs\.block_per_row: stored 2, now 4"
  ):
    _train(config, str(tmp_path))


@pytest.mark.parametrize("checkpoint_every", [2, 3])
def test_nan_loss_stops_after_writing_metrics(prepared, tmp_path, checkpoint_every):
  # Step 1 is finite (the loss is taken before the update); the update then throws the
  # weights to ~1e36 and the next logits overflow. Step 2 either checkpoints (its loss is
  # read before the save) or not (read one step late, while step 3 runs, and step 3 is a
  # checkpoint step): either way no checkpoint is written.
  config = tiny_config(
    "listops",
    prepared("listops"),
    learning_rate=1e38,
    checkpoint_every_steps=checkpoint_every,
    eval_every_steps=checkpoint_every,
  )
  with pytest.raises(train.NonFiniteLossError, match=r"loss is (nan|inf) at step 2"):
    _train(config, str(tmp_path))
  events = reporting.read_metrics(str(tmp_path))
  assert [e["step"] for e in events] == [1, 2]
  assert np.isfinite(events[0]["loss"]) and not np.isfinite(events[-1]["loss"])
  for folder in ("checkpoints", "best"):
    assert not os.listdir(tmp_path / folder)


def test_missing_data_names_the_prepare_command(tmp_path):
  config = tiny_config("pathfinder32", str(tmp_path / "nothing_here"))
  with pytest.raises(
    pipeline.DataNotFoundError,
    match=r"python -m lra.prepare --task=pathfinder32 --data_dir=.*nothing",
  ):
    _train(config, str(tmp_path / "run"))


def test_damaged_data_stops_before_the_first_step(tmp_path, caplog):
  data_dir = str(tmp_path / "data")
  prepare_lib.prepare("listops", data_dir, num_train=16, num_val=8, num_test=8)
  version_dir = builders.version_dir("listops", data_dir)
  shard = os.path.join(version_dir, "lra_listops-train.array_record-00000-of-00001")
  digests_test.flip_middle_bytes(shard)
  config = tiny_config("listops", data_dir)
  workdir = tmp_path / "run"
  with pytest.raises(
    errors.DataCorruptError,
    match=rf"{shard} does not match .*\n  python -m lra.prepare --task=listops "
    rf"--data_dir={data_dir} --num_train=16 --num_val=8 --num_test=8 --overwrite",
  ):
    _train(config, str(workdir))
  assert not workdir.exists()  # No stamp, no checkpoint, no metrics.
  # Data prepared before digests existed: said once, and the run goes on.
  os.remove(os.path.join(version_dir, digests.DIGEST_FILE))
  with caplog.at_level(logging.WARNING):
    inputs.ensure_data(run_config.from_config_dict(config), data_dir)
  assert caplog.text.count("prepared before digests were written") == 1


def test_listops_generates_its_data_when_allowed(tmp_path):
  config = tiny_config(
    "listops",
    "",
    generate_data=True,
    generate_sizes=(24, 8, 8),
    generate_max_tokens=60,
    num_train_steps=2,
  )
  results = _train(config, str(tmp_path))
  assert results["num_test_examples"] == 8
  assert os.path.exists(tmp_path / "data" / "lra_generated_listops.json")


@pytest.mark.parametrize(
  "attention", ["softmax", pytest.param("mra2_tpu_kernels", marks=pytest.mark.slow)]
)
def test_data_parallel_step_matches_one_device(attention, prepared, monkeypatch):
  """The 4-device sharded step and gradient accumulation equal a plain step (round-off).

  "mra2_tpu_kernels": MRA-2 with the Mosaic TPU kernels (interpret mode here), which on the
  harness's Auto-axis mesh the op runs under a shard_map it lays out itself, as on a TPU.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from lra import models, optim  # pylint: disable=g-import-not-at-top,g-multiple-import
  from pallas_kernels.block_sparse_attention import sharding  # pylint: disable=g-import-not-at-top

  overrides = {}
  shard_mapped = []
  if attention == "mra2_tpu_kernels":
    overrides = {"attention": "mra2", "attention_kwargs.impl": "pallas_mosaic_tpu"}
    run_sharded = sharding._shard_mapped  # pylint: disable=protected-access

    def counted(call, mesh, batch, head, args):
      shard_mapped.append((mesh.size, batch, head))
      return run_sharded(call, mesh, batch, head, args)

    monkeypatch.setattr(sharding, "_shard_mapped", counted)
  config = tiny_config("listops", prepared("listops"), **overrides)
  config.model.dropout_rate = 0.0
  run = run_config.from_config_dict(config)
  cfg = run.model
  graphdef, params, rest = nnx.split(models.build(cfg, rngs=nnx.Rngs(params=0)), nnx.Param, ...)
  tx, _ = optim.make_optimizer(
    dataclasses.replace(run.optimizer, learning_rate=1e-3, total_steps=10)
  )
  rng = np.random.default_rng(0)
  batch = {
    "inputs": rng.integers(1, 16, (8, 64)).astype(np.int32),
    "mask": np.arange(64)[None, :] < rng.integers(10, 64, (8, 1)),
    "label": rng.integers(0, 10, (8,)).astype(np.int32),
  }
  key = jax.random.key(0)
  results = []
  for devices, accum in ((1, 1), (4, 1), (4, 2)):
    mesh = jax.make_mesh(
      (devices,),
      ("data",),
      axis_types=(jax.sharding.AxisType.Auto,),
      devices=jax.devices()[:devices],
    )
    host = jax.device_get({"params": params, "rest": rest, "opt_state": tx.init(params)})
    state = jax.device_put(host, jax.NamedSharding(mesh, jax.P()))  # (the step donates it)
    step = train.make_train_step(graphdef, tx, accum)
    new_state, metrics = step(
      state, inputs.to_global(batch, jax.NamedSharding(mesh, jax.P("data"))), key
    )
    assert len(new_state["params"]["head"]["out"]["kernel"].sharding.device_set) == devices
    results.append((jax.device_get(new_state["params"]), float(metrics["loss"])))
  for other, loss in results[1:]:
    assert loss == pytest.approx(results[0][1], rel=1e-5)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), results[0][0], other
    )
  if attention == "mra2_tpu_kernels":
    # Traced once per 4-device step (accumulation 1 and 2): batch over the "data" axis.
    assert set(shard_mapped) == {(4, ("data",), None)}


@pytest.mark.slow
@pytest.mark.parametrize("name", __import__("mra_jax.attentions", fromlist=["names"]).names())
def test_every_attention_trains(name, prepared, tmp_path):
  config = tiny_config("listops", prepared("listops"), name, num_train_steps=2)
  results = _train(config, str(tmp_path))
  events = reporting.read_metrics(str(tmp_path))
  assert [e["split"] for e in events] == ["train", "train", "validation", "test"]
  assert all(np.isfinite(e["loss"]) for e in events)
  assert results["config"]["attention_kwargs"] == config.attention_kwargs.to_dict()


def test_results_record_provenance_and_the_stamp_does_not(prepared, tmp_path, monkeypatch):
  data_dir = prepared("listops")
  config = tiny_config("listops", data_dir, num_train_steps=2)
  results = _train(config, str(tmp_path))
  made = results["provenance"]
  assert made["code"] == provenance.code_version()
  assert made["code"]["source"] == "git" and len(made["code"]["commit"]) == 40
  assert made["software"]["jax"] == jax.__version__
  assert made["device"]["platform"] == "cpu" and made["device"]["num_devices"] == 4
  with open(os.path.join(builders.version_dir("listops", data_dir), digests.DIGEST_FILE)) as f:
    stored = json.load(f)
  splits = {k: v for k, v in stored["sha256"].items() if ".array_record" in k}
  assert made["data"]["split_sha256"] == splits and len(splits) == 3
  assert made["data"]["command"] == stored["command"]
  with open(tmp_path / "results.json") as f:
    assert json.load(f)["provenance"] == made
  with open(tmp_path / checkpoints.CONFIG_FILE) as f:
    stamp_text = f.read()
  assert "provenance" not in stamp_text and made["code"]["commit"] not in stamp_text
  # Another commit (or library version) is not another config: the workdir is accepted.
  other = {"commit": "f" * 40, "dirty": True, "source": "git"}
  monkeypatch.setattr(provenance, "code_version", lambda: other)
  again = _train(config, str(tmp_path))
  assert again["already_complete"] and again["provenance"]["code"] == made["code"]
