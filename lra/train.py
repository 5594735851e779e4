"""Training and evaluation of one run: `train_and_evaluate(run, workdir)`.

Data parallel over every device of every process: parameters are replicated, each batch is
sharded over a 1-D mesh axis "data", and `jax.jit` inserts the gradient all-reduce. A step is
a pure function of (state, batch, step number): the dropout key is folded from the seed and
the step, and the loader position is checkpointed, so a run killed at any moment and rerun
replays the same steps and ends bit-identical (on CPU) to an uninterrupted one. SIGTERM and
SIGINT stop it at the next step boundary with a checkpoint of that step (`lra.preemption`),
so a preempted run loses nothing; a rerun of a finished run says so and writes nothing.
"""

import dataclasses
import functools
import json
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import optax
import tqdm
from flax import nnx
from jax.experimental import multihost_utils

from lra import (
  checkpoints,
  evaluation,
  inputs,
  length_eval,
  memory,
  models,
  objectives,
  optim,
  preemption,
  provenance,
  reporting,
  run_config,
)
from lra.data import builders

RESULTS_FILE = "results.json"


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or Inf; the run stopped."""


def init_state(
  cfg: models.ModelConfig, tx: optax.GradientTransformation, seed: int, sharding
) -> dict:
  """{"params", "rest", "opt_state"} of a fresh model, placed by `sharding`.

  Initialisation runs as one compiled program (eager init compiles every op on its own); a
  model started from a checkpoint is built eagerly instead (its weights would otherwise be
  constants of that program).
  """

  def init():
    model = models.build(cfg, rngs=nnx.Rngs(params=seed))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return {"params": params, "rest": rest, "opt_state": tx.init(params)}

  if cfg.pretrained:
    return jax.device_put(init(), sharding)
  return jax.jit(init, out_shardings=sharding)()


@functools.lru_cache(maxsize=4)
def _programs(graphdef, opt_cfg: optim.OptimizerConfig, grad_accum_steps: int, objective):
  """Optimizer and jitted steps, shared by runs of one process with the same settings
  (a resumed or repeated run in the same process skips recompiling)."""
  tx, lr_schedule = optim.make_optimizer(opt_cfg)
  return (
    tx,
    lr_schedule,
    make_train_step(graphdef, tx, grad_accum_steps, objective),
    make_eval_step(graphdef, objective),
  )


def _check_devices(run: run_config.RunConfig, num_devices: int) -> None:
  micro = run.batch_size // run.grad_accum_steps
  if micro % num_devices:
    raise ValueError(
      f"batch_size / grad_accum_steps must be a whole multiple of the {num_devices} "
      f"devices; got batch_size={run.batch_size}, grad_accum_steps={run.grad_accum_steps}"
    )
  if run.eval_batch_size % num_devices:
    raise ValueError(
      f"eval_batch_size must be a multiple of the {num_devices} devices; got "
      f"eval_batch_size={run.eval_batch_size}"
    )


def make_train_step(
  graphdef,
  tx: optax.GradientTransformation,
  grad_accum_steps: int,
  objective=objectives.CLASSIFICATION,
):
  """Returns jit(state, batch, dropout_key) -> (state, {"loss", "accuracy"}).

  The loss is the objective's (`lra.objectives`): the mean over the examples, or over the
  predicted bytes; with accumulation, the mean of the micro-batches' means.
  """

  def loss_fn(params, rest, batch, key):
    terms = objectives.loss_terms(objective, graphdef, params, rest, batch, key)
    return objective.train_metrics(*terms)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state, batch, dropout_key):
    params, rest = state["params"], state["rest"]
    if grad_accum_steps == 1:
      (loss, accuracy), grads = grad_fn(params, rest, batch, dropout_key)
    else:
      # Micro-batch i takes rows i, i + A, i + 2A, ...: every device keeps an equal share
      # of each micro-batch under the batch sharding.
      micro = jax.tree.map(
        lambda x: jnp.swapaxes(
          x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps, *x.shape[1:]), 0, 1
        ),
        batch,
      )

      def body(carry, xs):
        i, mb = xs
        (l, a), g = grad_fn(params, rest, mb, jax.random.fold_in(dropout_key, i))
        return jax.tree.map(jnp.add, carry, (l, a, g)), None

      zeros = (
        jnp.zeros((), jnp.float32),
        jnp.zeros((), jnp.float32),
        jax.tree.map(jnp.zeros_like, params),
      )
      (loss, accuracy, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum_steps), micro))
      loss, accuracy, grads = jax.tree.map(lambda x: x / grad_accum_steps, (loss, accuracy, grads))
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_state = {
      "params": optax.apply_updates(params, updates),
      "rest": rest,
      "opt_state": opt_state,
    }
    return new_state, {"loss": loss, "accuracy": accuracy}

  return jax.jit(step, donate_argnums=0)


def make_eval_step(graphdef, objective=objectives.CLASSIFICATION):
  """Returns jit(params, rest, batch) -> sums of (loss, correct, count) over the batch
  (count: real examples, or predicted bytes, `lra.objectives`)."""

  def step(params, rest, batch):
    terms = objectives.loss_terms(objective, graphdef, params, rest, batch, None)
    return objective.eval_sums(*terms, batch)

  return jax.jit(step)


def _maybe_initialize_distributed() -> None:
  """Joins a multi-host job when the environment describes one (JAX_COORDINATOR_ADDRESS)."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS") and not jax.distributed.is_initialized():
    jax.distributed.initialize(
      coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
      process_id=int(os.environ["JAX_PROCESS_ID"]),
    )


def _warn_if_memory_is_short(run: run_config.RunConfig) -> None:
  cfg = run.model
  micro = run.batch_size // run.grad_accum_steps // jax.device_count()
  towers = 2 if cfg.dual_input else 1
  estimate = memory.activation_bytes(
    micro_batch=micro * towers,
    length=cfg.sequence_length,
    num_layers=cfg.num_layers,
    embed_dim=cfg.embed_dim,
    qkv_dim=cfg.qkv_dim,
    mlp_dim=cfg.mlp_dim,
    num_heads=cfg.num_heads,
    attention=cfg.attention,
    knobs=cfg.attention_knobs,
    bytes_per_value=jnp.dtype(cfg.dtype).itemsize,
  )
  memory.warn_if_too_large(
    estimate,
    memory.available_bytes(),
    what=f"{run.task} with {run.attention} at batch {micro} "
    f"per device, length {cfg.sequence_length}",
  )


def _provenance(run: run_config.RunConfig, data_dir: str) -> dict:
  """The code, software, device and data fingerprint of this run (`lra.provenance`)."""
  version_dir = builders.version_dir(run.task_spec, data_dir)
  stamp = os.path.join(data_dir, inputs.GENERATED_STAMP.format(task=run.task_spec.data_id))
  return {
    "code": provenance.code_version(),
    "software": provenance.software_versions(),
    "device": provenance.device_record(),
    "data": provenance.data_fingerprint(version_dir, stamp),
  }


def _read_metrics(metrics: dict) -> tuple[float, float]:
  """A step's (loss, accuracy) on the host; waits for that step to finish."""
  loss, accuracy = jax.device_get((metrics["loss"], metrics["accuracy"]))
  return float(loss), float(accuracy)


@dataclasses.dataclass
class _Window:
  """Train metrics averaged between two log events (checkpointed with the step)."""

  loss: float = 0.0
  accuracy: float = 0.0
  count: int = 0
  start_time: float = dataclasses.field(default_factory=time.time)


def completed_results(workdir: str) -> dict | None:
  """The results of the finished run in `workdir` (None while it is not finished).

  results.json is written last, and only by a run whose config the workdir's stamp holds.
  """
  path = os.path.join(os.path.abspath(os.path.expanduser(workdir)), RESULTS_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def train_and_evaluate(run: run_config.RunConfig, workdir: str) -> dict:
  """Trains (or resumes) a run in `workdir`, evaluates the best-dev model on test.

  A workdir whose run finished is not trained or evaluated again: its results are returned
  with `"already_complete": True` and nothing is written.

  Returns:
    The results dict also written to `<workdir>/results.json`.

  Raises:
    ValueError: a bad config value (named in the message); nothing is written.
    checkpoints.ConfigMismatchError: `workdir` was made by another config.
    lra.data.errors.DataNotFoundError: the data is missing (message: the prepare command).
    lra.data.errors.DataCorruptError: a stored data file differs from its digest (message:
      the file and the command that regenerates it).
    NonFiniteLossError: the loss became NaN/Inf (metrics are written first).
    preemption.Stopped: SIGTERM or SIGINT during training; the step reached is checkpointed.
    preemption.Interrupted: SIGTERM or SIGINT before or after training; nothing was lost.
  """
  with preemption.StopSignals() as signals:
    return _train_and_evaluate(run, workdir, signals)


def _train_and_evaluate(run, workdir: str, signals: preemption.StopSignals) -> dict:
  _maybe_initialize_distributed()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  primary = jax.process_index() == 0
  # Everything is checked before anything is written: a bad config, another run's workdir
  # or missing or corrupt data leaves the workdir as it was.
  _check_devices(run, jax.device_count())
  checkpoints.check_config(workdir, run)
  finished = completed_results(workdir)
  if finished is not None:
    return {
      **finished,
      "already_complete": True,
      "steps_this_session": 0,
      "train_seconds_this_session": 0.0,
    }
  data_dir = inputs.resolve_data_dir(run, workdir)
  if primary:
    inputs.ensure_data(run, data_dir)
  if jax.process_count() > 1:  # The other hosts read what process 0 may have generated.
    multihost_utils.sync_global_devices("lra data ready")
  if primary:
    checkpoints.store_config(workdir, run)
  os.makedirs(workdir, exist_ok=True)
  made_with = _provenance(run, data_dir)
  # Auto axes: jit places the gradient all-reduce itself (no explicit-sharding typing).
  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  replicated = jax.NamedSharding(mesh, jax.P())
  batch_sharding = jax.NamedSharding(mesh, jax.P("data"))
  if run.check_memory:
    _warn_if_memory_is_short(run)

  cfg = run.model
  objective = objectives.for_task(run.task_spec)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: models.build(cfg, rngs=nnx.Rngs(0))))
  tx, lr_schedule, train_step, eval_step = _programs(
    graphdef, run.optimizer, run.grad_accum_steps, objective
  )
  state = init_state(cfg, tx, run.seed, replicated)
  num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  logging.info(
    "%s / %s: %d parameters, %d devices, %d processes",
    run.task,
    run.attention,
    num_params,
    jax.device_count(),
    jax.process_count(),
  )

  train_loader = inputs.make_loader(
    run, data_dir, "train", batch_size=run.batch_size, train=True, workers=inputs.data_workers(run)
  )
  ckpt = checkpoints.Checkpointer(workdir)
  start_step, best = 0, objective.initial_best()
  window = _Window()
  restored = ckpt.restore_latest(state)
  if restored is not None:
    start_step, state, meta = restored
    train_loader.set_state(meta["loader"])
    best = meta["best"]
    window = _Window(meta["window"]["loss"], meta["window"]["accuracy"], meta["window"]["count"])
    if primary:
      reporting.truncate_metrics(workdir, start_step)
    ckpt.drop_best_after(start_step)
    logging.info("Resumed from step %d", start_step)
  # Events after the checkpoint are replayed: TensorBoard hides the old ones.
  writer = reporting.MetricsWriter(workdir, enabled=primary, purge_step=start_step + 1)

  dropout_root = jax.random.fold_in(jax.random.key(run.seed), 1)
  eval_data = evaluation.EvalBatches(run, data_dir)

  def run_eval(split, params_, num_batches):
    return objective.summarise(
      evaluation.evaluate(
        eval_step,
        params_,
        state["rest"],
        eval_data.batches(split, num_batches),
        batch_size=run.eval_batch_size,
        num_batches=num_batches,
        sharding=batch_sharding,
      )
    )

  def due(step: int, every: int) -> bool:
    return step % every == 0 or step == run.num_train_steps

  bar = tqdm.tqdm(
    total=run.num_train_steps,
    initial=start_step,
    disable=not primary,
    desc=f"{run.task}/{run.attention}",
    unit="step",
    dynamic_ncols=True,
  )

  def close_all() -> None:
    writer.close()
    bar.close()
    train_loader.close()
    ckpt.close()

  def record(step: int, metrics) -> None:
    """Reads `step`'s metrics to the host: checks the loss, logs, advances the bar.

    Called one step late (the next step is already queued), so reading never leaves the
    device idle; a step that evaluates or checkpoints is read at once, before either.
    """
    nonlocal window
    loss, accuracy = _read_metrics(metrics)
    if not math.isfinite(loss):
      writer.write(
        step,
        "train",
        loss=loss,
        accuracy=accuracy,
        **objective.train_extras(loss),
        learning_rate=float(lr_schedule(step - 1)),
      )
      close_all()
      raise NonFiniteLossError(
        f"Training loss is {loss} at step {step}; stopped (metrics written to "
        f"{os.path.join(workdir, reporting.METRICS_FILE)}). Try a lower learning_rate "
        f"(now {run.learning_rate}), gradient clipping (--config.optimizer."
        f"grad_clip_norm=1.0) or float32 compute. The last checkpoint is step "
        f"{ckpt.latest_step()}."
      )
    window.loss += loss
    window.accuracy += accuracy
    window.count += 1
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    if due(step, run.log_every_steps):
      elapsed = time.time() - window.start_time
      writer.write(
        step,
        "train",
        loss=window.loss / window.count,
        accuracy=window.accuracy / window.count,
        **objective.train_extras(window.loss / window.count),
        learning_rate=float(lr_schedule(step - 1)),
        steps_per_sec=window.count / max(elapsed, 1e-9),
      )
      window = _Window()

  def save(step: int, position: dict) -> None:
    meta = {"loader": position, "best": best, "window": dataclasses.asdict(window)}
    ckpt.save(step, state, meta)

  iterator = iter(train_loader)

  def fetch() -> tuple[dict, dict]:
    """The next batch on the devices (the copy runs while the current step computes), and
    the loader position after it (a checkpoint of that step resumes there)."""
    host_batch = next(iterator)
    return inputs.to_global(host_batch, batch_sharding), train_loader.get_state()

  train_start, timed_steps = time.time(), 0
  upcoming = fetch() if start_step < run.num_train_steps else None
  unread = None  # (step, metrics) dispatched but not yet read to the host.
  with signals.deferred(what_after="after training (its last checkpoint is saved)"):
    for step in range(start_step + 1, run.num_train_steps + 1):
      batch, position = upcoming
      state, metrics = train_step(state, batch, jax.random.fold_in(dropout_root, step))
      timed_steps += 1
      stopping = signals.should_stop(step)
      if step < run.num_train_steps and not stopping:
        upcoming = fetch()
      if unread is not None:
        record(*unread)
      unread = (step, metrics)
      evaluates = due(step, run.eval_every_steps)
      checkpoints_now = due(step, run.checkpoint_every_steps) or stopping
      if not (evaluates or checkpoints_now):
        continue
      # Nothing of this step is evaluated or saved before its loss has been checked.
      record(*unread)
      unread = None
      if evaluates:
        val = run_eval("validation", state["params"], run.num_eval_batches)
        writer.write(step, "validation", **objective.reported(val))
        if primary:
          bar.write(objective.validation_line(step, val))
        if objective.improves(val, best):
          best = objective.best_entry(val, step)
          ckpt.save_best(step, state["params"], dict(best))
      save(step, position)
      if stopping:
        close_all()
        raise preemption.Stopped(step, signals.signum)
  bar.close()
  train_loader.close()
  train_seconds = time.time() - train_start

  best_params = state["params"]
  restored_best = ckpt.restore_best(state["params"])
  if restored_best is not None:
    best_params, best = restored_best
  test = run_eval("test", best_params, -1)
  writer.write(run.num_train_steps, "test", **objective.reported(test), best_step=best["step"])
  by_length = {}
  if run.eval_lengths:
    by_length = length_eval.evaluate_lengths(
      run, data_dir, eval_step, best_params, state["rest"], batch_sharding, objective
    )
    for length, metrics in by_length.items():
      writer.write(run.num_train_steps, f"test_length_{length}", **objective.reported(metrics))
  writer.close()
  ckpt.close()
  results = {
    "task": run.task,
    "attention": run.attention,
    "protocol": run.protocol,
    **objective.results(test, best),
    **({"test_at_lengths": length_eval.summary(run, test, by_length)} if by_length else {}),
    "num_parameters": int(num_params),
    "num_devices": jax.device_count(),
    "device_kind": jax.devices()[0].device_kind,
    "train_seconds_this_session": round(train_seconds, 1),
    "steps_this_session": timed_steps,
    "expected_result": run.expected_result,
    "config": run.record(),
    # The code, software, device and data of the session that wrote this file; never part
    # of the workdir's config stamp, so a new commit or library version resumes.
    "provenance": made_with,
  }
  if primary:
    tmp = os.path.join(workdir, RESULTS_FILE + ".tmp")
    with open(tmp, "w") as f:
      json.dump(results, f, indent=2)
    os.replace(tmp, os.path.join(workdir, RESULTS_FILE))
    if run.plot:
      reporting.plot_learning_curve(workdir)
  return results
