"""Evaluation of an LRA run: the mean loss and accuracy over a split, and the batches it reads.

`lra.train` builds the jitted evaluation step (it shares the loss with training); this module
feeds it and keeps the validation batches in memory between evaluations.
"""

import itertools
import logging
from collections.abc import Iterable

import jax
import jax.numpy as jnp

from lra import inputs


def evaluate(
  eval_step, params, rest, batches: Iterable[dict], *, batch_size: int, num_batches: int, sharding
) -> dict:
  """Mean loss and accuracy over the first `num_batches` (-1: all) of `batches`.

  The per-batch sums stay on the device and are read once at the end, so the host never
  waits for one batch before sending the next.

  Returns:
    {"loss", "accuracy"} (means over the predictions), "num_examples" (the real rows) and
    "num_predictions" (what the means are over: the rows, or the predicted bytes).
  """
  totals = None
  for i, batch in enumerate(batches):
    if 0 <= num_batches <= i:
      break
    local = batch_size // jax.process_count()
    sums = eval_step(params, rest, inputs.to_global(inputs.pad_batch(batch, local), sharding))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = {"loss": 0.0, "correct": 0.0, "count": 0.0} if totals is None else totals
  totals = {key: float(value) for key, value in jax.device_get(totals).items()}
  count = max(totals["count"], 1.0)
  return {
    "loss": totals["loss"] / count,
    "accuracy": totals["correct"] / count,
    "num_examples": int(totals.get("examples", totals["count"])),
    "num_predictions": int(totals["count"]),
  }


# Validation batches are kept in host memory up to this size: a run evaluates the same
# batches every `eval_every_steps`, and rereading them cost as much input work as training
# on the MRA protocol's ListOps (62 batches every 50 steps).
EVAL_CACHE_BYTES = 2 << 30


class EvalBatches:
  """The evaluation batches of a run; validation is read once and kept while it fits."""

  def __init__(self, run, data_dir: str):
    self._run = run
    self._data_dir = data_dir
    self._cache: dict[tuple[str, int], list[dict]] = {}

  def _loader(self, split: str):
    return inputs.make_loader(
      self._run, self._data_dir, split, batch_size=self._run.eval_batch_size, train=False
    )

  def batches(self, split: str, num_batches: int) -> Iterable[dict]:
    """The first `num_batches` (-1: all) host batches of `split`, in order."""
    key = (split, num_batches)
    if key in self._cache:
      return self._cache[key]
    if split != "validation":
      return self._loader(split)
    kept, size = [], 0
    stream = itertools.islice(self._loader(split), None if num_batches < 0 else num_batches)
    for batch in stream:
      kept.append(batch)
      size += sum(v.nbytes for v in batch.values())
      if size > EVAL_CACHE_BYTES:
        logging.info("validation batches exceed %d bytes: reread at every evaluation", size)
        return itertools.chain(kept, stream)
    self._cache[key] = kept
    return kept
