"""The entry points as a user meets them: mistakes answered in one line, --help, exit statuses.

Each case runs `python -m lra.main` (or `lra.gpu_run`) in a subprocess, as a user would;
the cases start together, so their imports overlap.
"""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USAGE_STATUS = 1  # absl's UsageError exit code.


def _start(module: str, *args: str) -> subprocess.Popen:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.Popen(
    [sys.executable, "-m", module, *args],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
  out, err = process.communicate(timeout=300)
  return process.returncode, out, err


def _error_lines(stderr: str) -> list[str]:
  """stderr without the lines libraries print at start-up (jax's platform probes)."""
  return [line for line in stderr.splitlines() if line.startswith("error:") or "Traceback" in line]


MISTAKES = {
  "unknown_key": (
    ["--config.attenton=softmax"],
    "error: --config.attenton: unknown config key 'attenton' (did you mean 'attention'?)",
  ),
  "unknown_nested_key": (
    ["--config.model.num_layer=3"],
    "error: --config.model.num_layer: unknown config key in model: 'num_layer' (did you mean "
    "'num_layers'?)",
  ),
  "unknown_knob": (
    ["--config.attention_kwargs.block_per_ro=3"],
    "error: --config.attention_kwargs.block_per_ro: unknown config key in attention_kwargs: "
    "'block_per_ro' (did you mean 'block_per_row'?)",
  ),
  "bad_value": (["--config.batch_size=-1"], "error: batch_size must be an integer >= 1; got"),
  "unparsable_value": (["--config.batch_size=big"], "error: --config.batch_size=big: "),
  "unknown_attention": (
    ["--config.attention=sofmax"],
    "error: --config.attention=sofmax: unknown attention name='sofmax' (did you mean 'softmax'?)",
  ),
  "bad_arg": (
    [],
    "error: --config=configs/listops.py:smok: unknown config argument 'smok' (did you mean "
    "'smoke'?)",
  ),
  "missing_file": ([], "error: --config=configs/listop.py: no such config file"),
}


def _config_flag(name: str) -> str:
  if name == "bad_arg":
    return "--config=configs/listops.py:smok"
  if name == "missing_file":
    return "--config=configs/listop.py"
  return "--config=configs/listops.py:smoke"


def test_each_mistake_is_one_line_naming_the_key_and_value(tmp_path):
  running = {
    name: _start("lra.main", _config_flag(name), f"--workdir={tmp_path / name}", *args)
    for name, (args, _) in MISTAKES.items()
  }
  for name, process in running.items():
    status, _, err = _finish(process)
    expected = MISTAKES[name][1]
    assert status == USAGE_STATUS, (name, status, err)
    assert _error_lines(err) == [line for line in _error_lines(err) if line.startswith("error:")]
    (line,) = _error_lines(err)  # One message, no traceback.
    assert line.startswith(expected), (name, line)
    assert not os.path.exists(tmp_path / name)  # Nothing written.


def test_help_lists_the_configs_keys_and_variants_and_exits_0():
  with_config = _start("lra.main", "--config=configs/listops.py:attention=softmax", "--help")
  without = _start("lra.main", "--help")
  gpu_run = _start("lra.gpu_run", "--help")
  status, out, err = _finish(with_config)
  assert status == 0, err
  assert "--workdir" in out and "--config" in out
  assert "smoke" in out and "protocol=lra" in out  # The variants, from the config file.
  assert "  batch_size" in out and "  model.num_layers" in out and "  optimizer.schedule" in out
  assert re.search(r"^  attention += 'softmax'$", out, re.M)
  # Each key's meaning, from its declaration.
  assert "Global batch (all devices and hosts together)".lower() in out.lower()
  status, out, _ = _finish(without)
  assert status == 0 and "--config=configs/<task>.py" in out
  status, out, _ = _finish(gpu_run)
  assert status == 0 and "--attentions" in out and "--tiny" in out


def test_help_lists_the_attentions_knobs_with_their_meaning():
  status, out, err = _finish(_start("lra.main", "--config=configs/listops.py", "--help"))
  assert status == 0, err
  assert re.search(r"^  attention_kwargs\.block_per_row += 8$", out, re.M)
  assert re.search(r"^  attention_kwargs\.num_blocks += \(unset\)$", out, re.M)
  assert "selection budget per query block row" in out
