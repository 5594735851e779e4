"""Tests of the ListOps generator, vocabulary and TSV files."""

import os

import numpy as np
import pytest

from lra.data import listops

SMALL = listops.ListOpsConfig(max_depth=6, max_args=5, min_length=20, max_length=200)


def _evaluate_official(source: str) -> int:
  """Independent evaluator of the official text form (stack machine over cleaned tokens)."""
  stack = []
  for tok in source.replace("(", " ").replace(")", " ").split():
    if tok.startswith("["):
      stack.append([tok[1:]])
    elif tok == "]":
      op, *args = stack.pop()
      value = {
        "MIN": min(args),
        "MAX": max(args),
        "SM": sum(args) % 10,
        "MED": int(np.median(args)),
      }[op]
      if not stack:
        return value
      stack[-1].append(value)
    else:
      if not stack:
        return int(tok)
      stack[-1].append(int(tok))
  raise AssertionError("unbalanced")


def test_same_seed_same_examples_other_seed_differs():
  a = listops.generate(30, seed=3, cfg=SMALL)
  assert a == listops.generate(30, seed=3, cfg=SMALL)
  assert a != listops.generate(30, seed=4, cfg=SMALL)


def test_lengths_labels_and_uniqueness():
  examples = listops.generate(60, seed=0, cfg=SMALL)
  keys = {" ".join(t) for t, _ in examples}
  assert len(keys) == 60
  for tokens, value in examples:
    assert SMALL.min_length < len(tokens) < SMALL.max_length
    text = listops.to_official_string(tokens)
    assert _evaluate_official(text) == value
    # The official cleanup leaves exactly one id per generator token.
    assert listops.encode(text).size == len(tokens)


def test_official_defaults_are_respected():
  cfg = listops.ListOpsConfig()
  assert (cfg.max_depth, cfg.max_args, cfg.min_length, cfg.max_length) == (10, 10, 500, 2000)
  ((tokens, _),) = listops.generate(1, seed=0)
  assert 500 < len(tokens) < 2000


def test_official_string_form_and_fixed_vocabulary():
  assert listops.to_official_string(["[MIN", "1", "2", "]"]) == "( ( ( [MIN 1 ) 2 ) ] )"
  ids = listops.encode("( ( ( [MIN 1 ) 2 ) ] )")
  np.testing.assert_array_equal(ids, [11, 2, 3, 15])
  assert listops.VOCAB[0] == "<pad>" and len(listops.VOCAB) == 16
  with pytest.raises(ValueError, match="FIRST"):
    listops.encode("[FIRST 1 ]")


def test_tsv_round_trip(tmp_path):
  examples = listops.generate(10, seed=1, cfg=SMALL)
  path = os.path.join(tmp_path, "basic_train.tsv")
  listops.write_tsv(path, examples)
  with open(path) as f:
    assert f.readline() == "Source\tTarget\n"
  read = list(listops.read_tsv(path))
  assert [label for _, label in read] == [v for _, v in examples]
  for (ids, _), (tokens, _) in zip(read, examples):
    np.testing.assert_array_equal(ids, listops.encode(" ".join(tokens)))


@pytest.mark.parametrize(
  "content,message",
  [
    ("Src\tTarget\n[MIN 1 ]\t1\n", "header"),
    ("Source\tTarget\n[MIN 1 2 ]\t12\n", ":2: label 12"),
    ("Source\tTarget\n[MIN 1 2 ]\t1\textra\n", ":2: expected 2"),
    ("Source\tTarget\n[MIN 1 2 ]\t1\n[FOO 1 ]\t1\n", ":3: Token"),
  ],
)
def test_bad_tsv_names_file_and_line(tmp_path, content, message):
  path = os.path.join(tmp_path, "basic_val.tsv")
  with open(path, "w") as f:
    f.write(content)
  with pytest.raises(ValueError, match=message) as info:
    list(listops.read_tsv(path))
  assert path in str(info.value)


def test_bad_config():
  with pytest.raises(ValueError, match="max_args"):
    listops.ListOpsConfig(max_args=1)


def _files(folder) -> dict[str, bytes]:
  return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_sharded_generation_does_not_depend_on_the_worker_count(tmp_path):
  """Shards of 7 examples (a tiny stand-in for official-size data): one worker and two
  write the same bytes; small totals keep the single stream of `generate_iter`."""
  sizes = (40, 6, 6)
  sharded = dict(single_stream_max=10, shard_size=7)
  for workers in (1, 2):
    listops.write_splits(str(tmp_path / f"w{workers}"), sizes, 3, SMALL, workers=workers, **sharded)
  one, two = _files(tmp_path / "w1"), _files(tmp_path / "w2")
  assert sorted(one) == sorted(listops.SPLIT_FILES.values())  # no shard files left behind
  assert one == two
  rows = [
    line for name in listops.SPLIT_FILES.values() for line in one[name].decode().splitlines()[1:]
  ]
  assert len(rows) == sum(sizes) == len(set(rows))
  # The first shard is the single stream's start; later shards are other draws.
  stream = [listops.to_official_string(t) for t, _ in listops.generate(sum(sizes), 3, SMALL)]
  assert [r.split("\t")[0] for r in rows[:7]] == stream[:7]
  assert [r.split("\t")[0] for r in rows] != stream
  listops.write_splits(str(tmp_path / "single"), sizes, 3, SMALL, workers=2)
  single = _files(tmp_path / "single")
  assert [r.split("\t")[0] for r in single["basic_train.tsv"].decode().splitlines()[1:]] == (
    stream[:40]
  )
