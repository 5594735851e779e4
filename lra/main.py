r"""Trains and evaluates one run: python -m lra.main --config=FILE[:ARGS] --workdir=DIR.

  python -m lra.main --config=configs/listops.py:smoke --workdir=/tmp/lra_smoke
  python -m lra.main --config=configs/listops.py:attention=softmax --workdir=DIR
  python -m lra.main --config=configs/listops.py --workdir=DIR --config.batch_size=16
  python -m lra.main --config=configs/listops.py --help     # every key, with its meaning

Rerunning the same command on the same workdir resumes it (SIGTERM or Ctrl-C stop it with a
checkpoint of the step reached); on a finished run it prints the result again. See
docs/lra.md.
"""

from absl import flags
from ml_collections import config_flags

from lra import cli, reporting, train

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "A configs/<task>.py file, optionally with :ARGS (e.g. :smoke).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results go here.")


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise cli.UsageError("--config=configs/<task>.py[:ARGS] and --workdir=DIR are required")
  results = train.train_and_evaluate(cli.typed(_CONFIG.value), _WORKDIR.value)
  print(reporting.result_line(results, _WORKDIR.value), flush=True)


if __name__ == "__main__":
  cli.run(main)
