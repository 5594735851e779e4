"""Sampling from a trained LM run: the cache's bytes are the full model's, and the command
line answers mistakes in one line."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lra import checkpoints, run_config, sampling


def test_generation_from_the_checkpoint_equals_the_full_model(lm_run):
  workdir, results = lm_run
  restored = sampling.restore(str(workdir))
  assert restored.step == results["best_step"]
  prompt = b"def f1(x):\n"
  out = sampling.generate(restored, prompt, max_new_bytes=12, temperature=0.0, seed=0)
  assert out["new_bytes"] + out["stopped_at_separator"] >= 1 and out["bytes_per_sec"] > 0
  # Greedy: each new byte is the full model's argmax after the bytes before it.
  full = nnx.merge(restored.graphdef, restored.params, restored.rest)
  sequence = [0, *prompt, *bytes.fromhex(out["sample_bytes"])]
  logits = full(jnp.asarray([sequence], jnp.int32))
  greedy = np.asarray(jnp.argmax(logits[0, len(prompt) : -1], -1))
  np.testing.assert_array_equal(greedy, np.frombuffer(bytes.fromhex(out["sample_bytes"]), np.uint8))
  path = sampling.record(str(workdir), out)
  with open(path) as f:
    assert json.load(f)[-1]["prompt"] == prompt.decode()
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["generation"] == out
  with pytest.raises(sampling.GenerationError, match="longer than the model's length 32"):
    sampling.generate(restored, b"x" * 32, max_new_bytes=1, temperature=0.0, seed=0)
  with pytest.raises(sampling.GenerationError, match="byte 0, the document separator"):
    sampling.generate(restored, b"a\0b", max_new_bytes=1, temperature=0.0, seed=0)


@pytest.mark.slow  # subprocesses; `generate` and its errors are tested in process above
def test_the_generate_command_answers_in_one_line(lm_run, tmp_path):
  """`python -m lra.generate` as a user meets it: a sample, or one line per mistake."""
  from configs import listops, lm  # pylint: disable=g-import-not-at-top

  from . import cli_test  # pylint: disable=g-import-not-at-top,relative-beyond-top-level

  workdir = str(lm_run[0])
  other_task, unfinished = tmp_path / "listops", tmp_path / "unfinished"
  checkpoints.store_config(str(other_task), run_config.from_config_dict(listops.get_config()))
  checkpoints.store_config(str(unfinished), run_config.from_config_dict(lm.get_config("smoke")))
  nul = tmp_path / "nul.txt"
  nul.write_bytes(b"def \x00f")
  cases = {
    "too_long": (
      [f"--workdir={workdir}", "--prompt=" + "x" * 32],
      "error: the prompt is 32 bytes, longer than the model's length 32 allows",
    ),
    "separator": (
      [f"--workdir={workdir}", f"--prompt_file={nul}"],
      "error: the prompt holds byte 0, the document separator",
    ),
    "other_task": (
      [f"--workdir={other_task}"],
      f"error: workdir={str(other_task)!r} holds a run of task 'listops', not of the "
      "language-model task",
    ),
    "unfinished": (
      [f"--workdir={unfinished}"],
      f"error: workdir={str(unfinished)!r} holds no finished checkpoint",
    ),
  }
  good = cli_test._start(  # pylint: disable=protected-access
    "lra.generate", f"--workdir={workdir}", "--prompt=def f", "--max_new_bytes=8", "--seed=3"
  )
  helped = cli_test._start("lra.generate", "--help")  # pylint: disable=protected-access
  running = {name: cli_test._start("lra.generate", *args) for name, (args, _) in cases.items()}  # pylint: disable=protected-access
  for name, process in running.items():
    status, _, err = cli_test._finish(process)  # pylint: disable=protected-access
    assert status == cli_test.USAGE_STATUS, (name, err)
    (line,) = cli_test._error_lines(err)  # pylint: disable=protected-access
    assert line.startswith(cases[name][1]), (name, line)
  status, out, _ = cli_test._finish(helped)  # pylint: disable=protected-access
  assert status == 0 and "--prompt_file" in out and "--config" not in out
  status, out, err = cli_test._finish(good)  # pylint: disable=protected-access
  assert status == 0, err
  assert out.startswith("def f") and "bytes/s" in err
  with open(os.path.join(workdir, sampling.GENERATION_FILE)) as f:
    entry = json.load(f)[-1]
  assert entry["prompt"] == "def f" and entry["seed"] == 3 and entry["max_new_bytes"] == 8
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["generation"] == entry
  assert out == entry["prompt"] + entry["sample"] + "\n"
