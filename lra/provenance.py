"""What a result was made with: the code's commit, the software, the device and the data.

`lra.train` writes these records (`code_version`, `software_versions`, `device_record`,
`data_fingerprint`) into a run's results.json so that a reported accuracy can be traced
to the commit that produced it (and whether the tree had uncommitted changes), the
jax/jaxlib/flax versions, the device, and a fingerprint of the data (the settings that made
it and the sha256 of each stored split file). None of it enters the workdir's config stamp:
a new commit or library version never blocks a resume.

The commit comes from git when the tree is a checkout. A copy of the tree without `.git`
(sent to a GPU machine) reads it from the source stamp that `python -m tools.offline_wheels`
writes next to the wheels, `.whl/source_stamp.txt`. This module owns that format; one
`key=value` per line, readable by `grep '^commit=' FILE` as well as by `read_stamp`:

  commit=<40 hex digits>
  dirty=<true|false>     # true: tracked or untracked (not ignored) files differ from the commit
  written=<UTC time, ISO 8601, seconds>
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
from pathlib import Path

STAMP_NAME = "source_stamp.txt"
REPO_ROOT = Path(__file__).resolve().parent.parent
# Where `python -m tools.offline_wheels` puts the stamp in a copied tree.
DEFAULT_STAMP_DIR = REPO_ROOT / ".whl"
SOFTWARE = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tensorflow-datasets")
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


def code_version(repo: Path = REPO_ROOT, stamp_dir: Path | None = None) -> dict:
  """{"commit", "dirty", "source"}: from git, else from the stamp, else commit None.

  `source` says where it came from: "git", the stamp file's path, or "unknown".
  """
  try:
    commit, dirty = git_state(repo)
    return {"commit": commit, "dirty": dirty, "source": "git"}
  except RuntimeError:
    pass
  folder = DEFAULT_STAMP_DIR if stamp_dir is None else stamp_dir
  try:
    stamp = read_stamp(folder)
  except (OSError, ValueError):
    return {"commit": None, "dirty": None, "source": "unknown"}
  return {
    "commit": stamp["commit"],
    "dirty": stamp["dirty"],
    "source": str(folder / STAMP_NAME),
  }


def software_versions() -> dict[str, str | None]:
  """Python and the installed versions of the libraries a result depends on."""
  out = {"python": platform.python_version()}
  for name in SOFTWARE:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def device_record() -> dict:
  """The accelerator the run used: platform, device kind and counts."""
  import jax  # pylint: disable=g-import-not-at-top

  first = jax.devices()[0]
  return {
    "platform": first.platform,
    "device_kind": first.device_kind,
    "num_devices": jax.device_count(),
    "num_processes": jax.process_count(),
    # XLA's CPU code splits work by the cores it sees, so CPU results depend on both.
    "host_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    "host_cpu_model": _cpu_model(),
  }


def _cpu_model() -> str | None:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or None


def data_fingerprint(version_dir: str, generated_stamp: str | None = None) -> dict:
  """The data a run read: how it was made and the sha256 of each stored split file.

  Args:
    version_dir: `<data_dir>/lra_<task>/1.0.0`, holding `lra_digests.json` when the data
      was prepared by this code (older data has none: the files are hashed here).
    generated_stamp: the harness's record of generation settings, if the run generated
      the data (`<data_dir>/lra_generated_<task>.json`).

  Returns:
    {"command", "generated", "split_sha256": {file: sha256}, "fingerprint"}: the
    fingerprint is the sha256 of the sorted `file=sha256` lines of the split files, so two
    data dirs with the same examples in the same files have the same fingerprint. Data that
    records what it was made from (`lra_source.json`: the LM task's corpus, its own
    fingerprint, the Python version) adds it as "source".
  """
  from lra.data import digests  # pylint: disable=g-import-not-at-top

  path = os.path.join(version_dir, digests.DIGEST_FILE)
  if os.path.isfile(path):
    with open(path) as f:
      record = json.load(f)
    command, files = record.get("command"), record["sha256"]
  else:
    command = None
    files = {
      name: digests.file_sha256(os.path.join(version_dir, name))
      for name in sorted(os.listdir(version_dir))
      if os.path.isfile(os.path.join(version_dir, name))
    }
  splits = {name: sha for name, sha in sorted(files.items()) if ".array_record" in name}
  joined = "".join(f"{name}={sha}\n" for name, sha in splits.items())
  generated = None
  if generated_stamp and os.path.isfile(generated_stamp):
    with open(generated_stamp) as f:
      generated = json.load(f)
  out = {
    "command": command,
    "generated": generated,
    "split_sha256": splits,
    "fingerprint": hashlib.sha256(joined.encode()).hexdigest(),
  }
  from lra.data import prepare_lib  # pylint: disable=g-import-not-at-top

  source_path = os.path.join(version_dir, prepare_lib.SOURCE_FILE)
  if os.path.isfile(source_path):
    with open(source_path) as f:
      out["source"] = json.load(f)
  return out
