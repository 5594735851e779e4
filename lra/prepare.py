r"""Generates or converts the data of one LRA task, or of the byte-level LM task.

  python -m lra.prepare --task=listops --data_dir=DIR [--source=PATH] [--seed=S] \
      [--num_train=N --num_val=N --num_test=N] [--max_tokens=N] [--overwrite] [--workers=N]
  python -m lra.prepare --task=lm --data_dir=DIR [--max_tokens=W] [--source=DIR]

For `lm`, `--max_tokens` is the window length W (default 2048): each window variant has its
own sub-folder, so several coexist in one data dir; the sizes are bytes of each split, and
`--source` a folder of text files instead of the running Python's standard library
(docs/lm.md).

Data already prepared is checked against the sha256 digests written with it; `--overwrite`
deletes it and prepares it anew (the remedy a digest mismatch names).

See docs/data.md for each task's sources and layouts.
"""

import os
import sys

from absl import app, flags, logging

from lra.data import errors, pipeline, prepare_lib, tasks

_TASK = flags.DEFINE_enum("task", None, list(tasks.TASKS), "LRA task to prepare.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Output folder (shared by all tasks).")
_SOURCE = flags.DEFINE_string(
  "source",
  None,
  "Official release files or downloads to convert; unset generates "
  "listops/pathfinder* and looks for text/image/retrieval downloads in data_dir/downloads; "
  "lm: a folder of text files (unset: the running Python's standard library).",
)
_SEED = flags.DEFINE_integer("seed", 0, "Generator and subset seed.")
_NUM_TRAIN = flags.DEFINE_integer(
  "num_train", None, "Train examples (default: official; lm: bytes, default all)."
)
_NUM_VAL = flags.DEFINE_integer(
  "num_val", None, "Validation examples (default: official; lm: bytes, default all)."
)
_NUM_TEST = flags.DEFINE_integer(
  "num_test", None, "Test examples (default: official; lm: bytes, default all)."
)
_MAX_TOKENS = flags.DEFINE_integer(
  "max_tokens",
  0,
  "ListOps generation: > 0 makes expressions shorter than this. lm: the window length "
  "(0: 2048), stored in its own sub-folder w<N>.",
)
_WORKERS = flags.DEFINE_integer(
  "workers", 0, "Generator processes (0: every core); the data is the same for any count."
)
_OVERWRITE = flags.DEFINE_boolean(
  "overwrite", False, "Delete the task's stored files first and prepare them anew."
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Checked here rather than with mark_flags_as_required, which would bind every program
  # that merely imports this module.
  if not _TASK.value or not _DATA_DIR.value:
    raise app.UsageError("--task and --data_dir are required")
  # Shells leave "~" alone after "--data_dir=", so expand it here rather than make "./~".
  data_dir = os.path.abspath(os.path.expanduser(_DATA_DIR.value))
  try:
    prepare_lib.prepare(
      _TASK.value,
      data_dir,
      source=_SOURCE.value,
      seed=_SEED.value,
      num_train=_NUM_TRAIN.value,
      num_val=_NUM_VAL.value,
      num_test=_NUM_TEST.value,
      max_tokens=_MAX_TOKENS.value,
      overwrite=_OVERWRITE.value,
      workers=_WORKERS.value,
    )
  except (errors.DataNotFoundError, errors.DataCorruptError) as e:
    # Expected failures with a remedy in the message: say it plainly, no traceback.
    sys.exit(f"{type(e).__name__}: {e}")
  spec = tasks.get_task(_TASK.value).prepared_variant(_MAX_TOKENS.value)
  for split in tasks.SPLITS:
    logging.info(
      "%s %s: %d examples", spec.data_id, split, pipeline.num_examples(spec, split, data_dir)
    )


if __name__ == "__main__":
  app.run(main)
