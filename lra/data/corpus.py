"""The byte corpus of the language-model task: the running Python's standard library, or a folder.

Every machine that runs this code has a Python standard library, so the task needs no
download: by default its documents are the `*.py` files under
`sysconfig.get_paths()["stdlib"]` (site-packages, dist-packages and __pycache__ skipped);
`--source=DIR` takes every file under DIR instead (hidden names, site-packages and
__pycache__ skipped). A file that contains a NUL byte is skipped: byte 0 separates documents.

* **Split.** A document's split follows a stable hash of its relative path (POSIX
  separators): the first 8 bytes of sha256(path), big-endian, mod 100: below 90 train,
  below 95 validation, else test. Adding or removing a file moves no other file.
* **Stream.** A split is one byte stream: its documents in sorted path order, each preceded
  by the separator 0. The first byte of a split's stream is thus a separator and every
  document byte has one before it.
* **Windows.** The stream is cut into windows of W + 1 bytes with stride W (the last one
  shorter): a model of length W reads bytes 0..W-1 of a window and predicts bytes 1..W, so
  every byte of the stream but the first is predicted exactly once.
* **Fingerprint.** sha256 over the lines `path<TAB>sha256(content)` of the documents in
  sorted path order: the same files give the same fingerprint on any machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import sysconfig
from collections.abc import Iterator

import numpy as np

SEPARATOR = 0  # The document separator byte; never inside a document.
SPLITS = ("train", "validation", "test")
SPLIT_PERCENT = (("train", 90), ("validation", 95), ("test", 100))  # Cumulative bounds.
SPLIT_RULE = "sha256(relative path)[:8] big-endian mod 100: < 90 train, < 95 validation, else test"
_SKIPPED_DIRS = ("site-packages", "dist-packages", "__pycache__")


@dataclasses.dataclass(frozen=True)
class Document:
  """One file of the corpus: its relative POSIX path and its bytes (no NUL)."""

  path: str
  data: bytes


@dataclasses.dataclass(frozen=True)
class Corpus:
  """The documents of a corpus, sorted by path, and what names it.

  Attributes:
    kind: "python-stdlib" or "folder".
    root: the absolute folder the documents were read from.
    documents: sorted by `path`.
    skipped: relative paths of the files left out because they contain a NUL byte.
    fingerprint: hex sha256 naming the documents (module docstring).
  """

  kind: str
  root: str
  documents: tuple[Document, ...]
  skipped: tuple[str, ...]
  fingerprint: str

  def record(self) -> dict:
    """Where the corpus came from and what names it (JSON types)."""
    out = {
      "corpus": self.kind,
      "root": self.root,
      "fingerprint": self.fingerprint,
      "num_documents": len(self.documents),
      "num_bytes": sum(len(d.data) for d in self.documents),
      "skipped_files_with_nul": len(self.skipped),
    }
    if self.kind == "python-stdlib":
      out["python"] = f"{platform.python_implementation()} {platform.python_version()}"
    return out


def stdlib_root() -> str:
  """The running Python's standard-library folder."""
  return os.path.realpath(sysconfig.get_paths()["stdlib"])


def read(source: str | None = None) -> Corpus:
  """Reads the corpus: the standard library's `*.py` files (`source` None) or every file
  under the folder `source`.

  Raises:
    ValueError: `source` is not a folder, or holds no usable file.
  """
  if source is None:
    root, kind = stdlib_root(), "python-stdlib"
  else:
    root, kind = os.path.realpath(os.path.expanduser(source)), "folder"
    if not os.path.isdir(root):
      raise ValueError(f"--source must be a folder of text files; got source={source!r}")
  documents, skipped = [], []
  for path in _files(root, python_only=source is None):
    with open(os.path.join(root, path), "rb") as f:
      data = f.read()
    if bytes([SEPARATOR]) in data:
      skipped.append(path)
    else:
      documents.append(Document(path, data))
  if not documents:
    raise ValueError(f"source={root!r} holds no file without a NUL byte to read")
  return Corpus(kind, root, tuple(documents), tuple(skipped), fingerprint(documents))


def _files(root: str, *, python_only: bool) -> list[str]:
  """Relative POSIX paths of the corpus's files under `root`, sorted."""
  out = []
  for folder, dirs, files in os.walk(root):
    dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS and (python_only or d[0] != ".")]
    for name in files:
      if python_only and not name.endswith(".py"):
        continue
      if not python_only and name.startswith("."):
        continue
      full = os.path.join(folder, name)
      if os.path.isfile(full):
        out.append(os.path.relpath(full, root).replace(os.sep, "/"))
  return sorted(out)


def fingerprint(documents) -> str:
  """sha256 over `path<TAB>sha256(data)` lines, in sorted path order."""
  h = hashlib.sha256()
  for doc in sorted(documents, key=lambda d: d.path):
    h.update(f"{doc.path}\t{hashlib.sha256(doc.data).hexdigest()}\n".encode())
  return h.hexdigest()


def _path_hash(path: str) -> bytes:
  return hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()


def split_of(path: str) -> str:
  """The split ("train", "validation", "test") of the document at relative `path`."""
  bucket = int.from_bytes(_path_hash(path)[:8], "big") % 100
  return next(split for split, bound in SPLIT_PERCENT if bucket < bound)


def split_documents(corpus: Corpus, split: str) -> list[Document]:
  """The documents of `split`, in sorted path order."""
  return [d for d in corpus.documents if split_of(d.path) == split]


def stream(documents: list[Document], limit: int | None = None) -> bytes:
  """The byte stream of `documents`: each preceded by the separator, in sorted path order.

  Args:
    documents: one split's documents.
    limit: None for all of them; else the stream of exactly `limit` bytes made from the
      documents taken in hash order (a fixed pseudo-random subset that does not depend on
      the window) until they hold `limit` bytes, then put in path order and cut at `limit`.

  Raises:
    ValueError: `limit` exceeds what the documents hold.
  """
  if limit is not None:
    total = sum(len(d.data) + 1 for d in documents)
    if limit > total:
      raise ValueError(f"the split holds {total} bytes, {limit} requested")
    chosen, size = [], 0
    for doc in sorted(documents, key=lambda d: _path_hash(d.path)):
      if size >= limit:
        break
      chosen.append(doc)
      size += len(doc.data) + 1
    documents = sorted(chosen, key=lambda d: d.path)
  sep = bytes([SEPARATOR])
  joined = b"".join(sep + d.data for d in documents)
  return joined if limit is None else joined[:limit]


def num_windows(stream_bytes: int, window: int) -> int:
  """Windows of `window + 1` bytes at stride `window` that predict every byte but the first."""
  return max(0, -(-(stream_bytes - 1) // window))


def windows(data: bytes, window: int) -> Iterator[np.ndarray]:
  """uint8 windows of `window + 1` bytes at stride `window` (the last one shorter)."""
  array = np.frombuffer(data, np.uint8)
  for i in range(num_windows(len(data), window)):
    yield array[i * window : i * window + window + 1]


def split_streams(
  text: Corpus, sizes: tuple[int | None, int | None, int | None], window: int
) -> tuple[dict[str, bytes], dict]:
  """Each split's byte stream, and the record of what they were made from.

  Args:
    text: the corpus.
    sizes: (train, validation, test) bytes of each stream; None: the whole split.
    window: the model length the streams will be cut for (recorded with the window count).

  Returns:
    ({split: stream}, record): the record holds `Corpus.record()`, the window, the
    separator, the split rule, the sizes asked for, and per split its documents, bytes and
    windows.

  Raises:
    ValueError: a split without documents, or a size beyond what a split holds.
  """
  record = {
    **text.record(),
    "window": window,
    "separator": SEPARATOR,
    "split_rule": SPLIT_RULE,
    "sizes": list(sizes),
    "splits": {},
  }
  streams = {}
  for split, limit in zip(SPLITS, sizes):
    documents = split_documents(text, split)
    if not documents:
      raise ValueError(
        f"{text.root}: no document of its {len(text.documents)} falls in the {split} split "
        f"({SPLIT_RULE}); use a folder with more files"
      )
    try:
      data = stream(documents, limit)
    except ValueError as e:
      raise ValueError(f"{text.root} {split}: {e}") from e
    streams[split] = data
    record["splits"][split] = {
      "documents": data.count(SEPARATOR),
      "bytes": len(data),
      "windows": num_windows(len(data), window),
    }
  return streams, record
