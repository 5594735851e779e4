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
import os
import random
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


def generate_iter(
  seed: int, cfg: ListOpsConfig = ListOpsConfig()
) -> Iterator[tuple[list[str], int]]:
  """Yields distinct accepted expressions as (bracket tokens, value), forever.

  Same seed and config => the same sequence. Only a 16-byte digest per expression is kept
  for de-duplication, so streaming 100k official-size examples stays small in memory.
  """
  rng = random.Random(seed)
  seen = set()
  while True:
    budget = [0]
    try:
      tokens, value = _sample(rng, cfg, 1, budget)
    except _TooLong:
      continue
    if not cfg.min_length < len(tokens) < cfg.max_length:
      continue
    key = hashlib.blake2b(" ".join(tokens).encode(), digest_size=16).digest()
    if key in seen:
      continue
    seen.add(key)
    yield tokens, value


def generate(
  num_examples: int, seed: int, cfg: ListOpsConfig = ListOpsConfig()
) -> list[tuple[list[str], int]]:
  """The first `num_examples` of `generate_iter(seed, cfg)`.

  Tokens use `]` for the closing bracket.
  """
  if num_examples < 0:
    raise ValueError(f"{num_examples=} must be >= 0")
  return list(itertools.islice(generate_iter(seed, cfg), num_examples))
