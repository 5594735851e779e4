"""A sha256 of every stored file of a prepared task, written by `prepare`, checked before use.

The digest file sits beside the split files (`<data_dir>/lra_<task>/1.0.0/`) and also
records the command that made them, so a mismatch can name both the damaged file and the
command that regenerates it. Files are hashed as a stream (1 MiB at a time): memory stays
flat and the largest task hashes at disk speed.

Data prepared before digests were written has no digest file: training says so once and
goes on (nothing to compare against); `python -m lra.prepare` on such data records the
files as they are.
"""

import hashlib
import json
import os

from lra.data import errors

DIGEST_FILE = "lra_digests.json"
_CHUNK_BYTES = 1 << 20


def file_sha256(path: str) -> str:
  """Hex sha256 of the file at `path`, read in chunks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK_BYTES):
      h.update(chunk)
  return h.hexdigest()


def _stored_files(version_dir: str) -> list[str]:
  return sorted(
    name
    for name in os.listdir(version_dir)
    if name != DIGEST_FILE and os.path.isfile(os.path.join(version_dir, name))
  )


def write(version_dir: str, command: str) -> None:
  """Records the sha256 of every file in `version_dir` and the `command` that made them."""
  record = {
    "command": command,
    "sha256": {
      name: file_sha256(os.path.join(version_dir, name)) for name in _stored_files(version_dir)
    },
  }
  path = os.path.join(version_dir, DIGEST_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


def has_digest(version_dir: str) -> bool:
  return os.path.isfile(os.path.join(version_dir, DIGEST_FILE))


def verify(version_dir: str) -> None:
  """Checks every recorded file against its sha256 (no digest file: nothing to check).

  Raises:
    errors.DataCorruptError: a recorded file is missing or differs; the message names it
      and the command that regenerates the data.
  """
  path = os.path.join(version_dir, DIGEST_FILE)
  if not os.path.isfile(path):
    return
  with open(path) as f:
    record = json.load(f)
  for name, want in sorted(record["sha256"].items()):
    file_path = os.path.join(version_dir, name)
    if not os.path.isfile(file_path):
      problem = "is missing"
    elif file_sha256(file_path) != want:
      problem = "does not match the sha256 recorded when it was prepared"
    else:
      continue
    raise errors.DataCorruptError(
      f"{file_path} {problem} ({path}): the stored data is damaged. Regenerate it with:\n  "
      f"{record['command']} --overwrite"
    )
