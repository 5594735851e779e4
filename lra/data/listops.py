"""ListOps: a seeded re-implementation of the LRA generator, its vocabulary and TSV files.

Grammar (as in the LRA generator): an expression is a digit 0..9 or `[OP e1 ... en ]` with OP one of
MIN, MAX, MED, SM (sum mod 10) and 2 <= n <= max_args. The official text form wraps every
step of a left-nested tuple in parentheses: `( ( ( [MIN 1 ) 2 ) ] )`; the official input
pipeline deletes the parentheses and turns `]` into `X`, leaving one token per symbol.
"""

import csv
import dataclasses
import hashlib
import itertools
import math
import multiprocessing
import os
import random
import shutil
from collections.abc import Iterable, Iterator

import numpy as np

# Fixed id table: never derived from a set's iteration order (the official vocabulary
# depended on the hash seed, which broke restored checkpoints).
PAD_ID = 0
VOCAB: tuple[str, ...] = (
  "<pad>",
  "0",
  "1",
  "2",
  "3",
  "4",
  "5",
  "6",
  "7",
  "8",
  "9",
  "[MIN",
  "[MAX",
  "[MED",
  "[SM",
  "X",
)
TOKEN_TO_ID = {tok: i for i, tok in enumerate(VOCAB)}
OPERATORS = ("MIN", "MAX", "MED", "SM")
SPLIT_FILES = {"train": "basic_train.tsv", "validation": "basic_val.tsv", "test": "basic_test.tsv"}
TSV_HEADER = ("Source", "Target")


@dataclasses.dataclass(frozen=True)
class ListOpsConfig:
  """Generator settings; the defaults are the official ones."""

  max_depth: int = 10
  max_args: int = 10
  min_length: int = 500  # exclusive
  max_length: int = 2000  # exclusive
  value_p: float = 0.25  # a node is an operator with probability value_p (official VALUE_P)

  def __post_init__(self):
    if self.max_args < 2:
      raise ValueError(f"ListOps needs max_args >= 2, got {self.max_args=}")
    if not 0 <= self.min_length < self.max_length - 1:
      raise ValueError(
        f"Need 0 <= min_length < max_length - 1, got {self.min_length=} {self.max_length=}"
      )


class _TooLong(Exception):
  pass


def _evaluate(op: str, values: list[int]) -> int:
  if op == "MIN":
    return min(values)
  if op == "MAX":
    return max(values)
  if op == "SM":
    return sum(values) % 10
  return int(np.median(values))  # MED: even counts average the middle two, truncated.


def _sample(rng: random.Random, cfg: ListOpsConfig, depth: int, budget: list[int]):
  """Returns (tokens, value) of a random tree; raises _TooLong once it cannot be accepted.

  Aborting early only drops trees the length filter would reject anyway, so the
  distribution of accepted trees is that of the official generator.
  """
  r = rng.random() if depth < cfg.max_depth else 1.0
  if r > cfg.value_p:
    budget[0] += 1
    if budget[0] >= cfg.max_length:
      raise _TooLong()
    digit = rng.randint(0, 9)
    return [str(digit)], digit
  num_args = rng.randint(2, cfg.max_args)
  op = rng.choice(OPERATORS)
  budget[0] += 2
  tokens, values = ["[" + op], []
  for _ in range(num_args):
    child_tokens, child_value = _sample(rng, cfg, depth + 1, budget)
    tokens.extend(child_tokens)
    values.append(child_value)
  tokens.append("]")
  if budget[0] >= cfg.max_length:
    raise _TooLong()
  return tokens, _evaluate(op, values)


def to_official_string(tokens: list[str]) -> str:
  """Writes bracket tokens in the official parenthesised form `( ( ( [MIN 1 ) 2 ) ] )`."""
  pos = 0

  def expression() -> str:
    nonlocal pos
    tok = tokens[pos]
    pos += 1
    if not tok.startswith("["):
      return tok
    args = []
    while tokens[pos] != "]":
      args.append(expression())
    pos += 1
    # The official tree is left-nested pairs, one per argument plus one for "]".
    return "( " * (len(args) + 1) + tok + "".join(f" {a} )" for a in args) + " ] )"

  text = expression()
  if pos != len(tokens):
    raise ValueError(f"Trailing tokens after a complete expression: {tokens[pos:]=}")
  return text


def encode(source: str) -> np.ndarray:
  """Official cleanup (delete parentheses, `]` -> `X`) then fixed-vocabulary ids.

  Args:
    source: an expression in official TSV form (or already cleaned).

  Returns:
    int32 [num_tokens] ids in 1..15.

  Raises:
    ValueError: a token outside the ListOps vocabulary.
  """
  cleaned = source.replace("]", "X").replace("(", "").replace(")", "")
  ids = []
  for tok in cleaned.split():
    if tok not in TOKEN_TO_ID or tok == VOCAB[PAD_ID]:
      raise ValueError(f"Token {tok!r} is not in the ListOps vocabulary {VOCAB[1:]}")
    ids.append(TOKEN_TO_ID[tok])
  return np.asarray(ids, dtype=np.int32)


def write_tsv(path: str, examples: Iterable[tuple[list[str], int]]) -> None:
  """Writes examples in the official layout: header `Source\tTarget`, one row each."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    writer = csv.writer(f, delimiter="\t", lineterminator="\n")
    writer.writerow(TSV_HEADER)
    for tokens, value in examples:
      writer.writerow((to_official_string(tokens), value))
  os.replace(tmp, path)


def read_tsv(path: str):
  """Yields (ids int32 [n], label) from an official or generated ListOps TSV.

  Raises:
    ValueError: naming `path` and the line for a wrong header, a malformed row, an
      unknown token or a label outside 0..9.
    FileNotFoundError: `path` does not exist.
  """
  with open(path, newline="") as f:
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != TSV_HEADER:
      raise ValueError(f"{path}: expected header {TSV_HEADER}, got {header=}")
    for line_no, row in enumerate(reader, start=2):
      if len(row) != 2:
        raise ValueError(f"{path}:{line_no}: expected 2 tab-separated columns, got {len(row)}")
      try:
        ids = encode(row[0])
        label = int(float(row[1]))
      except ValueError as e:
        raise ValueError(f"{path}:{line_no}: {e}") from e
      if not 0 <= label <= 9:
        raise ValueError(f"{path}:{line_no}: label {label} outside 0..9")
      if ids.size == 0:
        raise ValueError(f"{path}:{line_no}: empty expression")
      yield ids, label


def _distinct(rng: random.Random, cfg: ListOpsConfig) -> Iterator[tuple[list[str], int]]:
  """Accepted expressions drawn with `rng`, each once, forever."""
  seen = set()
  while True:
    budget = [0]
    try:
      tokens, value = _sample(rng, cfg, 1, budget)
    except _TooLong:
      continue
    if not cfg.min_length < len(tokens) < cfg.max_length:
      continue
    key = _key(tokens)
    if key in seen:
      continue
    seen.add(key)
    yield tokens, value


def _key(tokens: list[str]) -> bytes:
  return hashlib.blake2b(" ".join(tokens).encode(), digest_size=16).digest()


def generate_iter(
  seed: int, cfg: ListOpsConfig = ListOpsConfig()
) -> Iterator[tuple[list[str], int]]:
  """Yields distinct accepted expressions as (bracket tokens, value), forever.

  Same seed and config => the same sequence. Only a 16-byte digest per expression is kept
  for de-duplication, so streaming 100k official-size examples stays small in memory.
  """
  return _distinct(random.Random(seed), cfg)


def generate(
  num_examples: int, seed: int, cfg: ListOpsConfig = ListOpsConfig()
) -> list[tuple[list[str], int]]:
  """The first `num_examples` of `generate_iter(seed, cfg)`.

  Tokens use `]` for the closing bracket.
  """
  if num_examples < 0:
    raise ValueError(f"{num_examples=} must be >= 0")
  return list(itertools.islice(generate_iter(seed, cfg), num_examples))


# Sharded generation (`write_splits`). Up to SINGLE_STREAM_MAX examples come from one stream
# (`generate_iter(seed)`), as data generated before sharding existed; larger sets are made
# of shards of SHARD_SIZE examples, shard i drawn with its own seed (shard 0 is the single
# stream's start), generated in parallel and joined in shard order, dropping an expression
# already seen in an earlier shard. The result depends on the seed, settings and total
# only, never on the number of workers.
SINGLE_STREAM_MAX = 25_000
SHARD_SIZE = 6_250


def _shard_rng(seed: int, index: int) -> random.Random:
  return random.Random(seed if index == 0 else f"listops-shard:{seed}:{index}")


@dataclasses.dataclass(frozen=True)
class _Shard:
  folder: str
  seed: int
  index: int
  size: int
  cfg: ListOpsConfig

  @property
  def path(self) -> str:
    return os.path.join(self.folder, f"shard-{self.index:05d}.tsv")


def _write_shard(shard: _Shard) -> list[bytes]:
  """Writes a shard's rows (official text, value) and returns their de-duplication keys."""
  keys = []
  rows = itertools.islice(_distinct(_shard_rng(shard.seed, shard.index), shard.cfg), shard.size)
  with open(shard.path, "w", newline="") as f:
    writer = csv.writer(f, delimiter="\t", lineterminator="\n")
    for tokens, value in rows:
      writer.writerow((to_official_string(tokens), value))
      keys.append(_key(tokens))
  return keys


def _sharded_lines(
  folder: str, total: int, seed: int, cfg: ListOpsConfig, workers: int, shard_size: int
) -> Iterator[str]:
  """The first `total` distinct rows of the shards in order, as TSV lines."""
  os.makedirs(folder, exist_ok=True)
  seen, given, next_index = set(), 0, 0
  pool = None
  if workers > 1:
    # spawn, not fork: the caller may hold JAX's threads.
    pool = multiprocessing.get_context("spawn").Pool(workers)
  try:
    while given < total:
      count = math.ceil((total - given) / shard_size)
      shards = [
        _Shard(folder, seed, i, shard_size, cfg) for i in range(next_index, next_index + count)
      ]
      next_index += count
      results = pool.imap(_write_shard, shards) if pool else map(_write_shard, shards)
      for shard, keys in zip(shards, results):
        with open(shard.path, newline="") as f:
          for key, line in zip(keys, f, strict=True):
            if given == total or key in seen:
              continue
            seen.add(key)
            given += 1
            yield line
        os.remove(shard.path)
  finally:
    if pool is not None:
      pool.terminate()
    shutil.rmtree(folder, ignore_errors=True)


def write_splits(
  folder: str,
  sizes: Iterable[int],
  seed: int,
  cfg: ListOpsConfig = ListOpsConfig(),
  *,
  workers: int = 0,
  single_stream_max: int = SINGLE_STREAM_MAX,
  shard_size: int = SHARD_SIZE,
) -> None:
  """Writes the train/validation/test TSVs (`SPLIT_FILES`) of `sizes` distinct expressions.

  The splits are consecutive parts of one sequence, so no expression is in two of them.
  The files depend on `seed`, `cfg` and the sizes only: `workers` (0: every core) changes
  the time it takes, never the bytes (see SINGLE_STREAM_MAX).
  """
  sizes = list(sizes)
  if any(n < 0 for n in sizes) or len(sizes) != len(SPLIT_FILES):
    raise ValueError(f"sizes={sizes} must be {len(SPLIT_FILES)} counts >= 0")
  if workers < 0:
    raise ValueError(f"workers={workers} must be >= 0")
  if shard_size < 1:
    raise ValueError(f"shard_size={shard_size} must be >= 1")
  total = sum(sizes)
  os.makedirs(folder, exist_ok=True)
  if total <= single_stream_max:
    stream = generate_iter(seed, cfg)
    for name, n in zip(SPLIT_FILES.values(), sizes):
      write_tsv(os.path.join(folder, name), itertools.islice(stream, n))
    return
  lines = _sharded_lines(
    os.path.join(folder, ".shards"),
    total,
    seed,
    cfg,
    workers or os.cpu_count() or 1,
    shard_size,
  )
  for name, n in zip(SPLIT_FILES.values(), sizes):
    path = os.path.join(folder, name)
    with open(path + ".tmp", "w", newline="") as f:
      f.write("\t".join(TSV_HEADER) + "\n")
      f.writelines(itertools.islice(lines, n))
    os.replace(path + ".tmp", path)
  lines.close()
