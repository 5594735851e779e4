"""A small text file that records which commit a copied tree came from.

A copy of the working tree sent to another machine has no `.git`, so it cannot say which commit
its code is. The stamp, written next to the wheels that travel with it, can. Its format is one
`key=value` per line, readable by `grep '^commit=' FILE` as well as by `read_stamp`:

  commit=<40 hex digits>
  dirty=<true|false>     # true: tracked or untracked (not ignored) files differ from the commit
  written=<UTC time, ISO 8601, seconds>
"""

from __future__ import annotations

import datetime
import re
import subprocess
from pathlib import Path

STAMP_NAME = "source_stamp.txt"
_KEYS = ("commit", "dirty", "written")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def git_state(repo: Path) -> tuple[str, bool]:
  """The commit checked out in `repo` and whether the working tree differs from it.

  Raises:
    RuntimeError: `repo` is not a git checkout (a copy without `.git` keeps its old stamp).
  """
  git = lambda *args: (
    subprocess.run(
      ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout
  )
  try:
    return git("rev-parse", "HEAD").strip(), bool(git("status", "--porcelain").strip())
  except (OSError, subprocess.CalledProcessError) as error:
    raise RuntimeError(f"repo={repo} is not a git checkout: {error}") from error


def format_stamp(commit: str, dirty: bool, written: datetime.datetime) -> str:
  """The stamp's text for `commit`, `dirty` and the (timezone-aware) time `written`."""
  if not _COMMIT.fullmatch(commit):
    raise ValueError(f"commit={commit!r} is not 40 lowercase hex digits")
  if written.tzinfo is None:
    raise ValueError(f"written={written!r} has no timezone")
  when = written.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
  return f"commit={commit}\ndirty={'true' if dirty else 'false'}\nwritten={when}\n"


def parse_stamp(text: str) -> dict[str, str | bool]:
  """Reads a stamp's text back: `commit` and `written` as strings, `dirty` as a bool."""
  fields = dict(line.split("=", 1) for line in text.splitlines() if line.strip())
  if sorted(fields) != sorted(_KEYS):
    raise ValueError(f"stamp keys {sorted(fields)} are not {sorted(_KEYS)}")
  if not _COMMIT.fullmatch(fields["commit"]):
    raise ValueError(f"stamp commit={fields['commit']!r} is not 40 lowercase hex digits")
  if fields["dirty"] not in ("true", "false"):
    raise ValueError(f"stamp dirty={fields['dirty']!r} is not true or false")
  return {**fields, "dirty": fields["dirty"] == "true"}


def write_stamp(repo: Path, folder: Path) -> Path:
  """Writes `folder/source_stamp.txt` for the checkout at `repo`; returns its path."""
  commit, dirty = git_state(repo)
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / STAMP_NAME
  path.write_text(format_stamp(commit, dirty, datetime.datetime.now(datetime.timezone.utc)))
  return path


def read_stamp(folder: Path) -> dict[str, str | bool]:
  """Reads `folder/source_stamp.txt` (see `parse_stamp`)."""
  return parse_stamp((folder / STAMP_NAME).read_text())
