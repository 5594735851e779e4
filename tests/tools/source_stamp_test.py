"""The source stamp: its text format, and the commit and dirtiness it reads from git."""

import datetime
import shutil
import subprocess

import pytest

from tools import source_stamp

_COMMIT = "0123456789abcdef0123456789abcdef01234567"
_WHEN = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


def test_format_is_three_key_value_lines():
  text = source_stamp.format_stamp(_COMMIT, True, _WHEN)
  assert text == f"commit={_COMMIT}\ndirty=true\nwritten=2026-01-02T03:04:05Z\n"


def test_parse_reads_back_what_format_writes():
  stamp = source_stamp.parse_stamp(source_stamp.format_stamp(_COMMIT, False, _WHEN))
  assert stamp == {"commit": _COMMIT, "dirty": False, "written": "2026-01-02T03:04:05Z"}


@pytest.mark.parametrize(
  "text, message",
  [
    (f"commit={_COMMIT}\ndirty=false\n", "keys"),
    ("commit=abc123\ndirty=false\nwritten=x\n", "40 lowercase hex"),
    (f"commit={_COMMIT}\ndirty=maybe\nwritten=x\n", "true or false"),
  ],
)
def test_parse_rejects_malformed_stamps(text, message):
  with pytest.raises(ValueError, match=message):
    source_stamp.parse_stamp(text)


def test_format_rejects_a_short_commit_and_a_naive_time():
  with pytest.raises(ValueError, match="commit="):
    source_stamp.format_stamp("abc", False, _WHEN)
  with pytest.raises(ValueError, match="timezone"):
    source_stamp.format_stamp(_COMMIT, False, _WHEN.replace(tzinfo=None))


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_write_stamp_records_the_commit_and_whether_the_tree_is_dirty(tmp_path):
  repo, out = tmp_path / "repo", tmp_path / "out"
  git = lambda *args: subprocess.run(
    ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
    check=True,
    capture_output=True,
    text=True,
  ).stdout.strip()
  repo.mkdir()
  git("init", "-q")
  (repo / ".gitignore").write_text("/ignored/\n")
  (repo / "a.py").write_text("x = 1\n")
  git("add", ".")
  git("commit", "-q", "-m", "first")
  (repo / "ignored").mkdir()  # Ignored files, like the wheel folder itself, are not dirt.
  (repo / "ignored" / "w.whl").write_text("")

  source_stamp.write_stamp(repo, out)
  assert source_stamp.read_stamp(out)["commit"] == git("rev-parse", "HEAD")
  assert source_stamp.read_stamp(out)["dirty"] is False

  (repo / "new.py").write_text("")  # An untracked file travels with the tree too.
  source_stamp.write_stamp(repo, out)
  assert source_stamp.read_stamp(out)["dirty"] is True


def test_git_state_outside_a_checkout_says_so(tmp_path):
  with pytest.raises(RuntimeError, match="not a git checkout"):
    source_stamp.git_state(tmp_path)
