"""SIGTERM and SIGINT as a user meets them: `python -m lra.main` stops at a step boundary with
a checkpoint of that step, says so in one line, exits 143 / 130, and the same command resumes
to the same final metrics as a run that was never stopped."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from lra import reporting

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 150


def _command(data_dir: str, workdir: str) -> list[str]:
  """A tiny ListOps run: steps of a few milliseconds, so a signal lands mid-run."""
  return [
    sys.executable,
    "-m",
    "lra.main",
    "--config=configs/listops.py:smoke,attention=softmax",
    f"--workdir={workdir}",
    f"--config.data_dir={data_dir}",
    "--config.generate_data=False",
    f"--config.num_train_steps={STEPS}",
    "--config.eval_every_steps=40",
    "--config.checkpoint_every_steps=1000",  # Only the end and a stop write one.
    "--config.log_every_steps=1",
    "--config.max_length=64",
    "--config.batch_size=8",
    "--config.eval_batch_size=8",
    "--config.model.num_layers=1",
    "--config.model.embed_dim=16",
    "--config.model.qkv_dim=16",
    "--config.model.mlp_dim=16",
    "--config.model.classifier_hidden=(16,)",
    "--config.plot=False",
  ]


def _env():
  # One CPU device (the default in a user's shell), and no XLA optimisation time.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return {**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"}


def _run(data_dir, workdir) -> subprocess.CompletedProcess:
  return subprocess.run(
    _command(data_dir, workdir), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
  )


def _last_train_step(workdir: str) -> int:
  steps = [e["step"] for e in reporting.read_metrics(workdir) if e["split"] == "train"]
  return max(steps, default=0)


def _interrupt(data_dir, workdir, signum, after_step: int) -> tuple[int, str]:
  """Starts the run, sends `signum` once it has logged `after_step`; (status, stderr)."""
  process = subprocess.Popen(
    _command(data_dir, workdir),
    cwd=REPO,
    env=_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 600
  while _last_train_step(workdir) < after_step:
    assert process.poll() is None, process.communicate()
    assert time.time() < deadline
    time.sleep(0.05)
  process.send_signal(signum)
  _, err = process.communicate(timeout=600)
  return process.returncode, err


def _outcome(workdir: str) -> tuple:
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  events = [
    (e["step"], e["split"], e["loss"], e["accuracy"]) for e in reporting.read_metrics(workdir)
  ]
  keys = ("test_accuracy", "test_loss", "best_step", "best_validation_accuracy")
  return tuple(results[k] for k in keys), events


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  done = _run(prepared("listops"), workdir)
  assert done.returncode == 0, done.stderr
  return _outcome(workdir)


@pytest.mark.parametrize(
  "signum",
  [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],  # one code path
  ids=["SIGTERM", "SIGINT"],
)
def test_stop_checkpoints_the_step_and_the_rerun_ends_bit_identical(
  signum, prepared, tmp_path, uninterrupted
):
  data_dir, workdir = prepared("listops"), str(tmp_path / "run")
  status, err = _interrupt(data_dir, workdir, signum, after_step=3)
  assert status == 128 + signum, err
  lines = [line for line in err.splitlines() if "stopped at step" in line]
  assert "Traceback" not in err and len(lines) == 1, err
  match = re.fullmatch(
    rf"stopped at step (\d+) by {signum.name}; rerun the same command to resume", lines[0]
  )
  assert match, lines
  step = int(match.group(1))
  assert 3 <= step < STEPS
  # The checkpoint is the step reached; metrics go exactly that far.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [str(step)]
  assert _last_train_step(workdir) == step
  resumed = _run(data_dir, workdir)
  assert resumed.returncode == 0, resumed.stderr
  assert f"Resumed from step {step}" in resumed.stderr
  assert _outcome(workdir) == uninterrupted
