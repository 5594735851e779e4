"""The errors raised when a task's data is missing or damaged, and the command that fixes it."""


class DataNotFoundError(FileNotFoundError):
  """Data for a task is missing; the message says what to run or download, and where."""


class DataCorruptError(ValueError):
  """A stored data file differs from its digest; the message names it and how to regenerate."""


LRA_RELEASE_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def prepare_command(
  task: str,
  data_dir: str,
  *,
  source: str | None = None,
  seed: int = 0,
  counts: tuple[int | None, int | None, int | None] = (None, None, None),
  max_tokens: int = 0,
) -> str:
  """The `python -m lra.prepare` command line of these arguments (defaults left out)."""
  cmd = f"python -m lra.prepare --task={task} --data_dir={data_dir}"
  if source:
    cmd += f" --source={source}"
  if seed:
    cmd += f" --seed={seed}"
  for flag, value in zip(("num_train", "num_val", "num_test"), counts):
    if value is not None:
      cmd += f" --{flag}={value}"
  if max_tokens:
    cmd += f" --max_tokens={max_tokens}"
  return cmd
