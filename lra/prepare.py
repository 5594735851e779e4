r"""Generates or converts the data of one LRA task.

  python -m lra.prepare --task=listops --data_dir=DIR [--source=PATH] [--seed=S] \
      [--num_train=N --num_val=N --num_test=N]

See docs/data.md for each task's sources and layouts.
"""

import os

from absl import app, flags, logging

from lra.data import pipeline, prepare_lib, tasks

_TASK = flags.DEFINE_enum("task", None, list(tasks.TASKS), "LRA task to prepare.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Output folder (shared by all tasks).")
_SOURCE = flags.DEFINE_string(
  "source",
  None,
  "Official release files or downloads to convert; unset generates "
  "listops/pathfinder* and looks for text/image/retrieval downloads in data_dir/downloads.",
)
_SEED = flags.DEFINE_integer("seed", 0, "Generator and subset seed.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", None, "Train examples (default: official).")
_NUM_VAL = flags.DEFINE_integer("num_val", None, "Validation examples (default: official).")
_NUM_TEST = flags.DEFINE_integer("num_test", None, "Test examples (default: official).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Checked here rather than with mark_flags_as_required, which would bind every program
  # that merely imports this module.
  if not _TASK.value or not _DATA_DIR.value:
    raise app.UsageError("--task and --data_dir are required")
  # Shells leave "~" alone after "--data_dir=", so expand it here rather than make "./~".
  data_dir = os.path.abspath(os.path.expanduser(_DATA_DIR.value))
  prepare_lib.prepare(
    _TASK.value,
    data_dir,
    source=_SOURCE.value,
    seed=_SEED.value,
    num_train=_NUM_TRAIN.value,
    num_val=_NUM_VAL.value,
    num_test=_NUM_TEST.value,
  )
  for split in tasks.SPLITS:
    logging.info(
      "%s %s: %d examples", _TASK.value, split, pipeline.num_examples(_TASK.value, split, data_dir)
    )


if __name__ == "__main__":
  app.run(main)
