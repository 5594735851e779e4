"""Shared by the LM task's tests: a tiny text corpus on disk, and a tiny LM config."""

import os

from configs import lm
from lra.data import corpus

CAUSAL = ("softmax", "local", "mra2")


def write_corpus(root: str, num_files: int = 48) -> str:
  """A folder of small text files, every split holding a few, plus what must be skipped (a
  file with a NUL byte, __pycache__, a hidden file); returns `root`."""
  os.makedirs(os.path.join(root, "pkg", "__pycache__"))
  for i in range(num_files):
    folder = "pkg" if i % 3 else ""
    with open(os.path.join(root, folder, f"mod_{i:02d}.py"), "w") as f:
      f.write(
        f"# module {i}\n"
        + "".join(f"def f{j}(x):\n  return x * {i + j}\n" for j in range(i % 7 + 2))
      )
  with open(os.path.join(root, "pkg", "binary.dat"), "wb") as f:
    f.write(b"abc\x00def")
  with open(os.path.join(root, "pkg", "__pycache__", "mod.pyc"), "wb") as f:
    f.write(b"ignored")
  with open(os.path.join(root, ".hidden"), "w") as f:
    f.write("ignored")
  splits = {corpus.split_of(p) for p in corpus._files(root, python_only=False)}  # pylint: disable=protected-access
  assert splits == {"train", "validation", "test"}, splits
  return root


def tiny_config(data_dir: str, attention: str = "softmax", **overrides):
  """A 1-layer, 16-wide decoder on 32-byte windows, 4 steps of batch 8 (2 per device)."""
  c = lm.get_config(f"attention={attention}")
  c.data_dir = data_dir
  c.generate_data = False
  c.max_length = 32
  c.batch_size = c.eval_batch_size = 8
  c.num_train_steps = 4
  c.eval_every_steps = c.checkpoint_every_steps = 2
  c.log_every_steps = 1
  c.num_eval_batches = -1
  c.optimizer.warmup_steps = 1
  c.eval_lengths = ()
  c.plot = False
  c.check_memory = False
  c.model.update(num_layers=1, embed_dim=16, qkv_dim=16, num_heads=2, mlp_dim=32)
  if attention == "local":
    c.attention_kwargs.window_size = 8
  elif attention.startswith("mra2"):
    c.attention_kwargs.update(block_size=8, block_per_row=2)
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def run_config_of(data_dir: str):
  """The tiny softmax run of `lm_run` (tests/lra/conftest.py): 6 steps, dropout on (so its
  keys are pinned too), tested at one more length."""
  config = tiny_config(data_dir, eval_lengths=(64,), num_train_steps=6, checkpoint_every_steps=3)
  config.model.dropout_rate = 0.1
  return config
