"""What a run optimises, evaluates, selects by and reports: `for_task(task)`.

* `Classification` (the LRA tasks): one label per example; loss the mean cross-entropy over
  the batch; accuracy; the best checkpoint has the highest validation accuracy.
* `NextToken` (the LM task): a target per position (the next byte, where the mask is
  True); loss the mean cross-entropy over the predicted bytes; bits per byte (loss / ln 2)
  and next-byte accuracy; the best checkpoint has the lowest validation bits per byte.

The trainer's steps and its loop ask the objective and never the task, so the
classification path computes exactly what it did before the LM task existed.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class Classification:
  """One label per example: logits [B, classes], `batch["label"]` [B]."""

  name = "classification"

  def loss_terms(self, logits, batch):
    """(losses [B], correct [B] float32, weight None: every row counts)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    correct = (jnp.argmax(logits, axis=-1) == batch["label"]).astype(jnp.float32)
    return losses, correct, None

  def train_metrics(self, losses, correct, weight):
    del weight
    return losses.mean(), correct.mean()

  def eval_sums(self, losses, correct, weight, batch) -> dict:
    """Sums over the real rows (`batch["weight"]`, 0 for rows that pad a short batch)."""
    del weight
    w = batch["weight"]
    return {"loss": (losses * w).sum(), "correct": (correct * w).sum(), "count": w.sum()}

  def summarise(self, metrics: dict) -> dict:
    return metrics

  def initial_best(self) -> dict:
    return {"accuracy": -1.0, "step": 0}

  def improves(self, val: dict, best: dict) -> bool:
    return val["accuracy"] > best["accuracy"]

  def best_entry(self, val: dict, step: int) -> dict:
    return {"accuracy": val["accuracy"], "step": step}

  def reported(self, metrics: dict) -> dict:
    """The metrics an evaluation event carries (metrics.jsonl, TensorBoard)."""
    return {
      "loss": metrics["loss"],
      "accuracy": metrics["accuracy"],
      "num_examples": metrics["num_examples"],
    }

  def train_extras(self, loss: float) -> dict:
    del loss
    return {}

  def validation_line(self, step: int, val: dict) -> str:
    return f"step {step}: validation accuracy {val['accuracy']:.4f} loss {val['loss']:.4f}"

  def results(self, test: dict, best: dict) -> dict:
    return {
      "test_accuracy": test["accuracy"],
      "test_loss": test["loss"],
      "num_test_examples": test["num_examples"],
      "best_step": best["step"],
      "best_validation_accuracy": best["accuracy"],
    }


@dataclasses.dataclass(frozen=True)
class NextToken:
  """A target per position: logits [B, L, V], `batch["targets"]` [B, L], `batch["mask"]`."""

  name = "next_token"

  def loss_terms(self, logits, batch):
    """(losses [B, L], correct [B, L] float32, weight [B, L]: 1 where a byte is predicted)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    correct = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
    return losses, correct, batch["mask"].astype(jnp.float32)

  def train_metrics(self, losses, correct, weight):
    count = jnp.maximum(weight.sum(), 1.0)
    return (losses * weight).sum() / count, (correct * weight).sum() / count

  def eval_sums(self, losses, correct, weight, batch) -> dict:
    """Sums over the predicted bytes of the real rows; `examples` counts the rows."""
    w = weight * batch["weight"][:, None]
    return {
      "loss": (losses * w).sum(),
      "correct": (correct * w).sum(),
      "count": w.sum(),
      "examples": batch["weight"].sum(),
    }

  def summarise(self, metrics: dict) -> dict:
    return {**metrics, "bits_per_byte": metrics["loss"] / LN2}

  def initial_best(self) -> dict:
    return {"bits_per_byte": None, "step": 0}

  def improves(self, val: dict, best: dict) -> bool:
    return best["bits_per_byte"] is None or val["bits_per_byte"] < best["bits_per_byte"]

  def best_entry(self, val: dict, step: int) -> dict:
    return {"bits_per_byte": val["bits_per_byte"], "step": step}

  def reported(self, metrics: dict) -> dict:
    return {
      "loss": metrics["loss"],
      "accuracy": metrics["accuracy"],
      "bits_per_byte": metrics["bits_per_byte"],
      "num_examples": metrics["num_examples"],
      "num_bytes": metrics["num_predictions"],
    }

  def train_extras(self, loss: float) -> dict:
    return {"bits_per_byte": loss / LN2}

  def validation_line(self, step: int, val: dict) -> str:
    return (
      f"step {step}: validation bits per byte {val['bits_per_byte']:.4f} next-byte accuracy "
      f"{val['accuracy']:.4f}"
    )

  def results(self, test: dict, best: dict) -> dict:
    return {
      "test_bits_per_byte": test["bits_per_byte"],
      "test_accuracy": test["accuracy"],
      "test_loss": test["loss"],
      "num_test_examples": test["num_examples"],
      "num_test_bytes": test["num_predictions"],
      "best_step": best["step"],
      "best_validation_bits_per_byte": best["bits_per_byte"],
    }


CLASSIFICATION = Classification()
NEXT_TOKEN = NextToken()
_BY_NAME = {o.name: o for o in (CLASSIFICATION, NEXT_TOKEN)}


def for_task(task) -> Classification | NextToken:
  """The objective of a `lra.data.tasks.Task` (its `objective`)."""
  return _BY_NAME[task.objective]


def loss_terms(objective, graphdef, params, rest, batch, dropout_key: jax.Array | None):
  """The model's per-example (or per-position) losses, correct flags and weights."""
  model = nnx.merge(graphdef, params, rest)
  logits = model(batch["inputs"], batch["mask"], dropout_key)
  return objective.loss_terms(logits, batch)
