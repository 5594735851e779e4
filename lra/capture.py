"""One attention layer's inputs from a trained LRA run: q, k, v as that layer's core sees them.

For studying attention on real features (e.g. `benchmarks.approximation --workdir=DIR`):
the run's stored config rebuilds the model, its best-validation parameters (else the newest
checkpoint's) are restored, and one batch of a split goes through the model with the chosen
layer's attention core wrapped so that it records its arguments.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lra import checkpoints, inputs, models, optim, run_config


class _Recorder(nnx.Module):
  """Calls the wrapped attention core and keeps the first call's (q, k, v, mask)."""

  def __init__(self, core: nnx.Module):
    self.core = core
    self.seen: list[tuple[np.ndarray, ...]] = []

  def __call__(self, q, k, v, mask=None):
    if not self.seen:
      self.seen.append(tuple(np.asarray(x) for x in (q, k, v, mask)))
    return self.core(q, k, v, mask=mask)


def restore_params(run: run_config.RunConfig, workdir: str, model: nnx.Module) -> str:
  """Loads the best-validation parameters (else the newest checkpoint's) into `model`.

  Returns:
    Which checkpoint was used, for the record ("best step N" or "latest step N").
  """
  params = nnx.state(model, nnx.Param)
  ckpt = checkpoints.Checkpointer(os.path.expanduser(workdir))
  try:
    best = ckpt.restore_best(params)
    if best is not None:
      nnx.update(model, best[0])
      return f"best step {best[1]['step']}"
    # The newest resumable checkpoint holds {"params", "rest", "opt_state"}; build its
    # shapes from the optimizer the run used.
    tx = optim.make_optimizer(run.optimizer)[0]
    _, _, rest = nnx.split(model, nnx.Param, ...)
    latest = ckpt.restore_latest({"params": params, "rest": rest, "opt_state": tx.init(params)})
  finally:
    ckpt.close()
  if latest is None:
    raise FileNotFoundError(f"workdir={workdir!r} has no checkpoint to restore")
  nnx.update(model, latest[1]["params"])
  return f"latest step {latest[0]}"


def capture_qkv(
  workdir: str, *, layer: int = 0, split: str = "test", num_examples: int = 2
) -> dict[str, object]:
  """q, k, v and mask entering layer `layer`'s attention core of the run in `workdir`.

  Args:
    workdir: a directory written by `python -m lra.main` (config.json and checkpoints).
    layer: block index (encoder, or the language model's decoder), 0 <= layer < num_layers.
    split: data split the examples come from ("train", "validation" or "test").
    num_examples: examples (rows) to capture; for retrieval each pair gives two rows.

  Returns:
    {"q", "k", "v": float32 [B, L, H, D] numpy arrays (after the projections, before the
    attention's 1/sqrt(D) scaling; in the model's token order), "mask": bool [B, L],
    "source": a one-line description}.

  Raises:
    FileNotFoundError: not a run directory, or no checkpoint in it.
    ValueError: `layer` or `num_examples` out of range.
    lra.data.pipeline.DataNotFoundError: the run's data is not where its config says.
  """
  run = checkpoints.load_config(workdir)
  cfg = run.model
  if not 0 <= layer < cfg.num_layers:
    raise ValueError(f"layer must be in [0, {cfg.num_layers}) for this run; got {layer=}")
  if num_examples < 1:
    raise ValueError(f"num_examples must be >= 1; got {num_examples=}")
  model = models.build(cfg, rngs=nnx.Rngs(0))
  which = restore_params(run, workdir, model)
  # Encoders keep their blocks under `encoder`, the language model's decoder at the top.
  block = (model.encoder if hasattr(model, "encoder") else model).blocks[layer]
  recorder = _Recorder(block.attention.core)
  block.attention.core = recorder

  data_dir = inputs.resolve_data_dir(run, os.path.expanduser(workdir))
  loader = inputs.make_loader(run, data_dir, split, batch_size=num_examples, train=False)
  batch = next(iter(loader))
  model(jnp.asarray(batch["inputs"]), jnp.asarray(batch["mask"]))
  q, k, v, mask = recorder.seen[0]
  return {
    "q": q.astype(np.float32),
    "k": k.astype(np.float32),
    "v": v.astype(np.float32),
    "mask": np.asarray(mask, bool),
    "source": f"{run.task}/{run.attention} layer {layer}, {which}, {q.shape[0]} {split} rows",
  }
