"""The error raised when a task's data is not where the loader or `prepare` looks."""


class DataNotFoundError(FileNotFoundError):
  """Data for a task is missing; the message says what to run or download, and where."""


LRA_RELEASE_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def prepare_command(task: str, data_dir: str) -> str:
  return f"python -m lra.prepare --task={task} --data_dir={data_dir}"
