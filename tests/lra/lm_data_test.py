"""The LM task's data: the corpus, its hash split, windows, deterministic preparation."""

import hashlib
import json
import os

import numpy as np
import pytest

from lra.data import builders, corpus, digests, pipeline, prepare_lib, tasks

from . import lm_testing


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  return lm_testing.write_corpus(str(tmp_path_factory.mktemp("corpus")))


def test_the_corpus_skips_what_it_must_and_names_itself(source):
  text = corpus.read(source)
  paths = [d.path for d in text.documents]
  assert paths == sorted(paths) and "mod_00.py" in paths and "pkg/mod_01.py" in paths
  assert text.skipped == ("pkg/binary.dat",)  # Holds a NUL: byte 0 separates documents.
  assert not any("__pycache__" in p or p.startswith(".") for p in paths)
  lines = "".join(f"{d.path}\t{hashlib.sha256(d.data).hexdigest()}\n" for d in text.documents)
  assert text.fingerprint == hashlib.sha256(lines.encode()).hexdigest()
  assert corpus.read(source).fingerprint == text.fingerprint
  assert text.record()["corpus"] == "folder" and text.record()["root"] == os.path.realpath(source)


def test_the_standard_library_is_a_corpus():
  text = corpus.read()
  paths = [d.path for d in text.documents]
  assert all(p.endswith(".py") for p in paths) and "os.py" in paths
  assert not any("site-packages" in p or "__pycache__" in p for p in paths)
  assert text.record()["python"].split()[-1] == os.sys.version.split()[0]


def test_the_split_is_a_hash_of_the_path(source):
  text = corpus.read(source)
  for doc in text.documents:
    bucket = int.from_bytes(hashlib.sha256(doc.path.encode()).digest()[:8], "big") % 100
    want = "train" if bucket < 90 else "validation" if bucket < 95 else "test"
    assert corpus.split_of(doc.path) == want
  # Every document in exactly one split, in path order, each after one separator.
  parts = {s: corpus.split_documents(text, s) for s in corpus.SPLITS}
  assert sum(len(p) for p in parts.values()) == len(text.documents)
  stream = corpus.stream(parts["test"])
  assert stream == b"".join(b"\0" + d.data for d in parts["test"])


@pytest.mark.parametrize("window", [1, 7, 16])
def test_windows_predict_every_byte_but_the_first_once(window):
  data = bytes(range(1, 60))
  windows = list(corpus.windows(data, window))
  assert len(windows) == corpus.num_windows(len(data), window)
  assert all(len(w) == window + 1 for w in windows[:-1]) and 2 <= len(windows[-1]) <= window + 1
  targets = np.concatenate([w[1:] for w in windows])
  np.testing.assert_array_equal(targets, np.frombuffer(data[1:], np.uint8))
  np.testing.assert_array_equal(
    np.concatenate([w[:-1] for w in windows]), np.frombuffer(data[:-1], np.uint8)
  )


def test_a_size_is_the_same_bytes_at_every_window(source):
  documents = corpus.split_documents(corpus.read(source), "train")
  a = corpus.stream(documents, 700)
  assert len(a) == 700 and a[0] == 0
  assert a == corpus.stream(documents, 700)
  with pytest.raises(ValueError, match="holds .* bytes, 100000000 requested"):
    corpus.stream(documents, 100_000_000)


def _files(data_dir, window):
  spec = tasks.get_task("lm").for_length(window)
  version_dir = builders.version_dir(spec, data_dir)
  return version_dir, {
    name: digests.file_sha256(os.path.join(version_dir, name))
    for name in sorted(os.listdir(version_dir))
  }


def test_preparation_is_deterministic_and_windows_coexist(source, tmp_path):
  first, second = str(tmp_path / "a"), str(tmp_path / "b")
  prepare_lib.prepare("lm", first, source=source, max_tokens=16, progress=False)
  prepare_lib.prepare("lm", second, source=source, max_tokens=16, progress=False)
  dir_a, files_a = _files(first, 16)
  _, files_b = _files(second, 16)
  assert dir_a.endswith(os.path.join("lra_lm", "w16", "1.0.0"))
  # Same bytes in every file but the digest record, which names its data dir.
  stored = set(files_a) - {digests.DIGEST_FILE}
  assert len(stored) == 6 and all(files_a[n] == files_b[n] for n in stored), sorted(stored)
  record = prepare_lib.source_record(tasks.get_task("lm").for_length(16), first)
  assert record["fingerprint"] == corpus.read(source).fingerprint
  assert record["window"] == 16 and record["sizes"] == [None, None, None]
  # Another window in the same data dir, beside the first.
  prepare_lib.prepare("lm", first, source=source, max_tokens=32, num_test=200, progress=False)
  assert _files(first, 16)[1] == files_a
  spec32 = tasks.get_task("lm").for_length(32)
  assert prepare_lib.is_prepared(spec32, first)
  assert prepare_lib.source_record(spec32, first)["splits"]["test"]["bytes"] == 200
  with open(os.path.join(builders.version_dir(spec32, first), digests.DIGEST_FILE)) as f:
    assert json.load(f)["command"].endswith("--num_test=200 --max_tokens=32")


def test_batches_hold_bytes_their_next_bytes_and_a_mask(source, tmp_path):
  data_dir = str(tmp_path)
  spec = tasks.get_task("lm").for_length(16)
  prepare_lib.prepare(spec, data_dir, source=source, progress=False)
  loader = pipeline.make_loader(
    spec, "test", data_dir, batch_size=4, seed=0, shuffle=False, num_epochs=1, drop_remainder=False
  )
  batches = list(loader)
  inputs = np.concatenate([b["inputs"] for b in batches])
  targets = np.concatenate([b["targets"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  assert set(batches[0]) == {"inputs", "targets", "mask"} and inputs.shape[1] == 16
  stream = corpus.stream(corpus.split_documents(corpus.read(source), "test"))
  np.testing.assert_array_equal(targets[mask], np.frombuffer(stream[1:], np.uint8))
  np.testing.assert_array_equal(inputs[mask], np.frombuffer(stream[:-1], np.uint8))
  assert mask[:-1].all() and not mask[-1].all()  # Only the last window is short.


def test_bad_input_is_named(tmp_path):
  with pytest.raises(ValueError, match="--source must be a folder"):
    corpus.read(str(tmp_path / "missing"))
  few = tmp_path / "few"
  few.mkdir()
  (few / "only.py").write_text("x = 1\n")
  with pytest.raises(ValueError, match=r"falls in the (train|validation|test) split"):
    prepare_lib.prepare("lm", str(tmp_path / "out"), source=str(few), progress=False)
  with pytest.raises(ValueError, match=r"window \(max_length, or --max_tokens\)"):
    prepare_lib.prepare("lm", str(tmp_path / "out"), max_tokens=-3)
