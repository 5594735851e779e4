"""TFDS builders that store every LRA task as array_record files.

array_record output and reading through `as_data_source` need no TensorFlow (checked by
tests). A builder's features are its task's (`tasks.Task.features`), and its examples come
from callables handed in by `prepare_lib` (`tasks.Task.split_examples`), so the same
builder serves generated data, the official release files and raw downloads.
"""

import contextlib
import logging
import os
from collections.abc import Callable, Iterable

import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import example_serializer

from lra.data import tasks

VERSION = "1.0.0"


class _LraBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes the splits given as {split: callable returning an iterable of examples}."""

  VERSION = tfds.core.Version(VERSION)
  TASK: tasks.Task

  def __init__(
    self, *, split_examples: dict[str, Callable[[], Iterable[dict]]] | None = None, **kwargs
  ):
    self._split_examples = split_examples or {}
    super().__init__(**kwargs)

  # TFDS's default resolves the package through `importlib_resources`, which is not a
  # dependency here; the builders live in this file anyway.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=f"Long Range Arena task {self.TASK.name!r} (lra.data).",
      features=self.TASK.features(),
      supervised_keys=None,
      # TFDS shuffles records by key hash unless told not to; the LM task's windows are
      # stored in stream order (record i is window i).
      disable_shuffling=self.TASK.stored_in_order,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(fn) for split, fn in self._split_examples.items()}

  def _generate_examples(self, fn):
    yield from enumerate(fn())

  # TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared"
  # to stdout; nothing is downloaded here (the examples are generated or read from local
  # files), so a log line says what happens instead.
  def _log_download_bytes(self) -> None:
    logging.info("Writing %s into %s", self.TASK.name, self.data_dir)

  def _log_download_done(self) -> None:
    logging.info("%s written to %s", self.TASK.name, self.data_dir)


def _make_builder_class(task: tasks.Task) -> type[_LraBuilder]:
  name = "Lra" + "".join(p.capitalize() for p in task.name.split("_"))
  return type(name, (_LraBuilder,), {"TASK": task, "__module__": __name__}, skip_registration=True)


BUILDERS: dict[str, type[_LraBuilder]] = {
  name: _make_builder_class(spec) for name, spec in tasks.TASKS.items()
}


@contextlib.contextmanager
def deterministic_serialization():
  """Writes each tf.train.Example with its features in key order while active.

  TFDS serializes the feature map in the protobuf runtime's hash order, which changes from
  one process to the next: the same examples then give different bytes, hence different
  sha256 digests. Sorted keys make a dataset's files a function of its examples.
  """
  serializer = example_serializer.ExampleSerializer
  original = serializer.serialize_example

  def serialize(self, example):
    return self.get_tf_example(example).SerializeToString(deterministic=True)

  serializer.serialize_example = serialize
  try:
    yield
  finally:
    serializer.serialize_example = original


def make_builder(
  task: tasks.Task, data_dir: str, split_examples: dict[str, Callable[[], Iterable[dict]]]
) -> _LraBuilder:
  """The array_record builder of `task`'s stored variant, writing `split_examples`.

  A task with a `variant` (the LM task's windows) is a TFDS builder config of that name,
  so each variant has its own folder, `<data_dir>/lra_<task>/<variant>/1.0.0/`.
  """
  cls = BUILDERS[task.name]
  kwargs = {"data_dir": data_dir, "file_format": "array_record", "split_examples": split_examples}
  if task.variant is None:
    return cls(**kwargs)
  config = tfds.core.BuilderConfig(name=task.variant)
  # Declared on the class, so TFDS does not warn about a custom configuration.
  variant_cls = type(
    cls.__name__,
    (cls,),
    {"TASK": task, "BUILDER_CONFIGS": [config], "__module__": __name__},
    skip_registration=True,
  )
  return variant_cls(config=task.variant, **kwargs)


def dataset_name(task: str) -> str:
  """Folder name of the task's dataset under the data dir, e.g. "lra_listops"."""
  return BUILDERS[task].name


def version_dir(task: tasks.Task | str, data_dir: str) -> str:
  """Where `task`'s array_record files live under `data_dir` ("~" expanded): a task with a
  stored variant (`tasks.Task.variant`) keeps it in a sub-folder of that name."""
  spec = tasks.as_task(task)
  parts = [dataset_name(spec.name), *([spec.variant] if spec.variant else []), VERSION]
  return os.path.join(os.path.expanduser(data_dir), *parts)
