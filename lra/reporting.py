"""What a run shows its user: metrics.jsonl, TensorBoard events, a learning-curve PNG.

`metrics.jsonl` holds one JSON object per event, always with `step`, `split`, `loss` and
`accuracy` (a non-finite loss is written as JSON's `NaN`/`Infinity`, which Python reads back).
TensorBoard events are written by tensorboardX, so TensorFlow is not needed.
"""

import json
import math
import os

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "learning_curve.png"
TENSORBOARD_DIR = "tensorboard"


def result_line(results: dict, workdir: str) -> str:
  """The one line that reports a finished run (`train.train_and_evaluate`'s results)."""
  where = os.path.join(workdir, "results.json")
  if "test_bits_per_byte" in results:  # The LM task.
    longer = "".join(
      f"; at length {length}: {r['bits_per_byte']:.4f}"
      for length, r in results.get("test_at_lengths", {}).items()
      if not r.get("trained_length")
    )
    line = (
      f"{results['task']} / {results['attention']}: test {results['test_bits_per_byte']:.4f} "
      f"bits per byte on {results['num_test_bytes']} bytes (next-byte accuracy "
      f"{results['test_accuracy']:.4f}; best validation "
      f"{results['best_validation_bits_per_byte']:.4f} bits per byte at step "
      f"{results['best_step']}{longer}); results in {where}"
    )
  else:
    line = (
      f"{results['task']} / {results['attention']}: test accuracy "
      f"{results['test_accuracy']:.4f} on {results['num_test_examples']} examples "
      f"(best validation {results['best_validation_accuracy']:.4f} at step "
      f"{results['best_step']}); results in {where}"
    )
  if results.get("already_complete"):
    line = f"already complete, nothing to do: {line}"
  if results.get("expected_result"):
    line += f". Expected: {results['expected_result']}"
  return line


def truncate_metrics(workdir: str, last_step: int) -> None:
  """Drops events after `last_step`, and test events (`test`, and the LM task's
  `test_length_<L>`): a resumed run rewrites them."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return
  kept = [
    e for e in read_metrics(workdir) if e["step"] <= last_step and not e["split"].startswith("test")
  ]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for event in kept:
      f.write(json.dumps(event) + "\n")
  os.replace(tmp, path)


def read_metrics(workdir: str) -> list[dict]:
  """Every complete event of `metrics.jsonl` (a line cut by a crash is skipped)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  events = []
  with open(path) as f:
    for line in f:
      try:
        events.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return events


class MetricsWriter:
  """Appends events to metrics.jsonl and TensorBoard (process 0 only writes).

  `purge_step`: a resumed run replays the steps after its checkpoint; TensorBoard then hides
  the earlier session's events from that step on, so no step shows twice.
  """

  def __init__(self, workdir: str, enabled: bool = True, purge_step: int | None = None):
    self._enabled = enabled
    self._path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

      self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR), purge_step=purge_step)

  def write(self, step: int, split: str, **values) -> None:
    if not self._enabled:
      return
    event = {"step": int(step), "split": split, **{k: _plain(v) for k, v in values.items()}}
    with open(self._path, "a") as f:
      f.write(json.dumps(event) + "\n")
    for key, value in event.items():
      if key not in ("step", "split") and isinstance(value, (int, float)):
        self._tb.add_scalar(f"{split}/{key}", value, step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _plain(value):
  if hasattr(value, "item"):
    value = value.item()
  return value


def plot_learning_curve(workdir: str) -> str:
  """Train loss and validation accuracy against step, as learning_curve.png (Agg)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  events = read_metrics(workdir)
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  for split, style in (("train", "-"), ("validation", "o-")):
    points = [
      (e["step"], e["loss"], e["accuracy"])
      for e in events
      if e["split"] == split and math.isfinite(e.get("loss", math.nan))
    ]
    if points:
      steps, losses, accs = zip(*points)
      ax_loss.plot(steps, losses, style, label=split, markersize=3)
      ax_acc.plot(steps, accs, style, label=split, markersize=3)
  for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    ax.legend()
  title = os.path.basename(os.path.normpath(workdir))
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      c = json.load(f)
    title = f"{c['task']} / {c['attention']} ({c['protocol']} protocol) — {title}"
  fig.suptitle(title)
  fig.tight_layout()
  path = os.path.join(workdir, PLOT_FILE)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
