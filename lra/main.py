r"""Trains and evaluates one LRA run.

  python -m lra.main --config=configs/listops.py:smoke --workdir=/tmp/lra_smoke
  python -m lra.main --config=configs/listops.py --workdir=DIR --config.attention=softmax

Rerunning the same command on the same workdir resumes it. See docs/lra.md.
"""

import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lra import checkpoints, train
from lra.data import errors

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "A configs/<task>.py file, optionally with :args (e.g. :smoke).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results go here.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
  """Keeps orbax's and TFDS's per-save INFO lines out of the user's console."""

  def filter(self, record) -> bool:
    noisy = any(
      f"{os.sep}{lib}{os.sep}" in record.pathname
      for lib in ("orbax", "tensorflow_datasets", "grain")
    )
    return record.levelno >= std_logging.WARNING or not noisy


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (
    errors.DataNotFoundError,
    errors.DataCorruptError,
    checkpoints.ConfigMismatchError,
    train.NonFiniteLossError,
  ) as e:
    # Expected failures with a remedy in the message: say it plainly, no traceback.
    sys.exit(f"{type(e).__name__}: {e}")
  message = (
    f"{results['task']} / {results['attention']}: test accuracy "
    f"{results['test_accuracy']:.4f} on {results['num_test_examples']} examples "
    f"(best validation {results['best_validation_accuracy']:.4f} at step "
    f"{results['best_step']}); results in {_WORKDIR.value}/results.json"
  )
  logging.info(message)
  print(message, flush=True)


if __name__ == "__main__":
  app.run(main)
