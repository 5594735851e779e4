"""The eight LRA tasks as the MRA-paper protocol sees them."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Static description of one LRA task.

  Attributes:
    name: task name, e.g. "listops" or "pathfinder32".
    num_classes: number of labels.
    max_length: model sequence length of the MRA-paper protocol (per document for retrieval).
    vocab_size: number of token ids including the pad id 0.
    dual_input: True when an example is a pair of documents (retrieval).
    image_shape: (height, width) for pixel tasks, None for text-like tasks.
  """

  name: str
  num_classes: int
  max_length: int
  vocab_size: int
  dual_input: bool
  image_shape: tuple[int, int] | None

  @property
  def is_image(self) -> bool:
    return self.image_shape is not None


# ListOps ids come from the fixed table in `listops.VOCAB` (pad 0 + 15 symbols); text and
# retrieval use byte + 1 (pad 0); pixel tasks use the pixel value itself, so 0 is a real
# token there and only the mask tells padding apart.
TASKS: dict[str, TaskSpec] = {
  "listops": TaskSpec("listops", 10, 2048, 16, False, None),
  "text": TaskSpec("text", 2, 4096, 257, False, None),
  "retrieval": TaskSpec("retrieval", 2, 4096, 257, True, None),
  "image": TaskSpec("image", 10, 1024, 256, False, (32, 32)),
  "pathfinder32": TaskSpec("pathfinder32", 2, 1024, 256, False, (32, 32)),
  "pathfinder64": TaskSpec("pathfinder64", 2, 4096, 256, False, (64, 64)),
  "pathfinder128": TaskSpec("pathfinder128", 2, 16384, 256, False, (128, 128)),
  "pathfinder256": TaskSpec("pathfinder256", 2, 65536, 256, False, (256, 256)),
}

SPLITS = ("train", "validation", "test")


def get_task(name: str) -> TaskSpec:
  """Returns the `TaskSpec` of task `name`; ValueError listing the known tasks otherwise."""
  if name not in TASKS:
    raise ValueError(f"Unknown LRA task {name=}; known tasks: {sorted(TASKS)}")
  return TASKS[name]


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"Unknown {split=}; expected one of {SPLITS}")
