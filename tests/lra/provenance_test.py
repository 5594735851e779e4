"""lra.provenance: the commit from git or from the stamp of a copied tree, data fingerprints."""

import datetime
import hashlib
import json
import subprocess

import pytest

from lra import provenance

_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_a_tree_without_git_reads_the_commit_from_its_stamp(tmp_path):
  copy, stamp_dir = tmp_path / "copy", tmp_path / "copy" / ".whl"
  copy.mkdir()
  assert provenance.code_version(copy, stamp_dir) == {
    "commit": None,
    "dirty": None,
    "source": "unknown",
  }
  stamp_dir.mkdir()
  when = datetime.datetime(2026, 11, 27, 16, 40, 45, tzinfo=datetime.timezone.utc)
  (stamp_dir / provenance.STAMP_NAME).write_text(provenance.format_stamp(_COMMIT, True, when))
  assert provenance.code_version(copy, stamp_dir) == {
    "commit": _COMMIT,
    "dirty": True,
    "source": str(stamp_dir / provenance.STAMP_NAME),
  }


def test_a_checkout_reports_its_head_and_whether_it_is_dirty(tmp_path):
  git = lambda *a: subprocess.run(
    ["git", "-C", str(tmp_path), *a], check=True, capture_output=True, text=True
  ).stdout.strip()
  git("init", "-q")
  (tmp_path / "f.txt").write_text("x")
  git("add", "f.txt")
  git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
  head = git("rev-parse", "HEAD")
  assert provenance.code_version(tmp_path) == {"commit": head, "dirty": False, "source": "git"}
  (tmp_path / "f.txt").write_text("y")
  assert provenance.code_version(tmp_path)["dirty"] is True


def test_data_fingerprint_hashes_the_split_files_only(tmp_path):
  for name, text in (("a.array_record-0", "one"), ("b.array_record-0", "two"), ("info.json", "i")):
    (tmp_path / name).write_text(text)
  without_digests = provenance.data_fingerprint(str(tmp_path))
  sha = {n: hashlib.sha256(t.encode()).hexdigest() for n, t in (("a", "one"), ("b", "two"))}
  assert without_digests["split_sha256"] == {
    "a.array_record-0": sha["a"],
    "b.array_record-0": sha["b"],
  }
  lines = f"a.array_record-0={sha['a']}\nb.array_record-0={sha['b']}\n"
  assert without_digests["fingerprint"] == hashlib.sha256(lines.encode()).hexdigest()
  # With lra_digests.json the recorded digests (and command) are used; info.json is not part.
  (tmp_path / "lra_digests.json").write_text(
    json.dumps({"command": "prep", "sha256": {**without_digests["split_sha256"], "info.json": "z"}})
  )
  (tmp_path / "info.json").write_text("changed")
  with_digests = provenance.data_fingerprint(str(tmp_path))
  assert with_digests["fingerprint"] == without_digests["fingerprint"]
  assert with_digests["command"] == "prep"
  (tmp_path / "lra_digests.json").write_text(
    json.dumps({"command": "prep", "sha256": {"a.array_record-0": sha["b"]}})
  )
  assert provenance.data_fingerprint(str(tmp_path))["fingerprint"] != with_digests["fingerprint"]


def test_bad_stamps_are_refused():
  with pytest.raises(ValueError, match="commit="):
    provenance.parse_stamp("commit=abc\ndirty=true\nwritten=now\n")
