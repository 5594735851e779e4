"""The entry points' common command line: one-line answers to mistakes, help, exit statuses.

`run(main)` is `absl.app.run(main)` with:

* `--help` (`-h`, `--helpshort`) printing the program's own flags and, with
  `--config=FILE[:ARGS]`, that config's documentation (its variants) and every key with its
  value and meaning; exit status 0;
* `--config.attention=NAME` taken as the config argument `attention=NAME` (the attention
  brings its own knobs, so it is chosen when the config is built);
* every mistake on the command line (an unknown config key, with the closest one; a value
  that does not parse or that the run refuses; an unknown attention or task; a bad `:arg`;
  a missing or broken config file) answered by one line on stderr and absl's usage status
  (1), without a traceback;
* a run stopped by SIGTERM or SIGINT reported in one line, with status 128 + the signal's
  number (`lra.preemption`), and expected failures with a remedy (missing data, another
  run's workdir, a NaN loss) in one line with status 1.

Only entry points read flags; they hand `typed(config)` (a `RunConfig`) to the library.
"""

from __future__ import annotations

import importlib.util
import logging as std_logging
import os
import re
import sys
import textwrap
from collections.abc import Callable

from absl import app, flags

from lra import checkpoints, preemption, run_config, train
from lra.data import errors
from mra_jax import knobs

FLAGS = flags.FLAGS
USAGE_STATUS = 1  # absl's `UsageError.exitcode`.
_HELP = ("--help", "-h", "--helpshort", "-help", "-?")
# Failures whose message says what to do: printed as one line.
_EXPECTED = (
  errors.DataNotFoundError,
  errors.DataCorruptError,
  checkpoints.ConfigMismatchError,
  train.NonFiniteLossError,
)


class UsageError(ValueError):
  """A mistake on the command line; its message is the whole answer."""


def fail(message: str, status: int = USAGE_STATUS):
  """Prints `message` (one line) on stderr and exits with `status`."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def load_config_file(spec: str):
  """The ConfigDict of `--config=FILE[:ARGS]` (what `config_flags` would load), unlocked.

  Raises:
    UsageError: no such file, a file without `get_config`, or a `get_config` that refuses
      its argument (the message is the config's own).
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise UsageError(f"--config={spec}: no such config file {path!r}")
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isfile(os.path.join(folder, "__init__.py")):
    # A config inside a package (configs/) imports its siblings through it, from any cwd.
    parent = os.path.dirname(folder)
    if parent not in sys.path:
      sys.path.insert(0, parent)
  module_spec = importlib.util.spec_from_file_location("lra_cli_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (any error in the user's file)
    raise UsageError(f"--config={spec}: the file fails to load: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise UsageError(f"--config={spec}: {path} defines no get_config()")
  try:
    return module.get_config(arg) if arg else module.get_config(), module
  except (ValueError, KeyError, TypeError) as e:
    raise UsageError(f"--config={spec}: {_message(e)}") from e


def _message(e: BaseException) -> str:
  text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  return " ".join(str(text).split())


def _config_spec(argv: list[str]) -> tuple[int, str] | None:
  for i, arg in enumerate(argv):
    match = re.match(r"^--?config=(.*)$", arg)
    if match:
      return i, match.group(1)
  return None


def _choose_attention_in_spec(argv: list[str]) -> list[str]:
  """`--config.attention=X` becomes `attention=X` in the `--config=FILE:ARGS` argument."""
  found = _config_spec(argv)
  out, chosen = [], None
  for arg in argv:
    match = re.match(r"^--?config\.attention=(.*)$", arg)
    if match:
      chosen = match.group(1)
    else:
      out.append(arg)
  if chosen is None or found is None:
    return argv
  from mra_jax import attentions  # pylint: disable=g-import-not-at-top

  if chosen not in attentions.names():
    try:
      attentions.module_class(chosen)
    except ValueError as e:
      raise UsageError(f"--config.attention={chosen}: {_message(e)}") from e
  index, spec = found
  index = out.index(argv[index])
  path, _, arg = spec.partition(":")
  items = [item for item in arg.split(",") if item and not item.startswith("attention=")]
  out[index] = f"--config={path}:" + ",".join([*items, f"attention={chosen}"])
  return out


def _overrides(argv: list[str]) -> list[tuple[str, str]]:
  """(dotted key, raw value) of each `--config.KEY=VALUE`."""
  out = []
  for arg in argv:
    match = re.match(r"^--?config\.([^=]+)(?:=(.*))?$", arg)
    if match:
      out.append((match.group(1), match.group(2) or ""))
  return out


def _check_override_keys(config, argv: list[str]) -> None:
  """An unknown `--config.KEY` answered with its closest key (before absl's parser)."""
  for dotted, _ in _overrides(argv):
    node, parts = config, dotted.split(".")
    for depth, part in enumerate(parts):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        where = ".".join(parts[:depth])
        what = f"config key in {where}:" if where else "config key"
        message = knobs.unknown_message(what, [part], keys)
        if depth == 1 and parts[0] == "attention_kwargs":
          message += f" (the knobs of attention {config.attention!r})"
        raise UsageError(f"--config.{dotted}: {message}")
      node = node[part]


def _help(argv: list[str]) -> str:
  main = sys.modules["__main__"]
  doc = (main.__doc__ or "").strip()
  lines = [doc, "", "flags:"]
  module_flags = FLAGS.get_key_flags_for_module(main) or FLAGS.get_flags_for_module(main)
  for flag in sorted(module_flags, key=lambda f: f.name):
    lines.append(f"  --{flag.name}: {flag.help} (default: {flag.default_as_str})")
  found = _config_spec(argv)
  if found is None:
    if "config" in FLAGS:  # Entry points without a config (lra.generate) say nothing of it.
      lines += ["", "Add --config=configs/<task>.py[:ARGS] to list that config's keys."]
    return "\n".join(lines)
  spec = found[1]
  try:
    config, module = load_config_file(spec)
  except UsageError as e:
    return "\n".join([*lines, "", f"({e})"])
  lines += ["", f"{spec.partition(':')[0]}:", textwrap.indent((module.__doc__ or "").strip(), "  ")]
  lines += ["", f"keys of --config={spec} (set with --config.KEY=VALUE):"]
  width = max(len(key) for key, _, _ in run_config.describe(config))
  for key, value, meaning in run_config.describe(config):
    shown = "(unset)" if value is None else repr(value)
    lines.append(f"  {key:<{width}} = {shown}")
    if meaning:
      lines.append(textwrap.fill(meaning, 100, initial_indent=" " * 6, subsequent_indent=" " * 6))
  return "\n".join(lines)


def _parse(argv: list[str]) -> list[str]:
  """absl's flags parser, with the command-line conventions of this module."""
  try:
    argv = _choose_attention_in_spec(list(argv))
  except UsageError as e:
    fail(str(e))
  sys.argv = argv  # config_flags reads the overrides from sys.argv.
  if any(arg in _HELP for arg in argv[1:]):
    print(_help(argv))
    sys.exit(0)
  try:
    found = _config_spec(argv)
    if found is not None:
      config, _ = load_config_file(found[1])
      _check_override_keys(config, argv)
    return FLAGS(argv)
  except UsageError as e:
    fail(str(e))
  except flags.Error as e:
    fail(_flag_error(e))


def _flag_error(e: flags.Error) -> str:
  text = str(e)
  match = re.search(r"flag --(config\.[^=]+)=([^:]*): (.*)", text, re.S)
  if match:
    detail = _message(ValueError(match.group(3).splitlines()[-1]))
    return f"--{match.group(1)}={match.group(2)}: {detail}"
  return " ".join(text.split())


def typed(config) -> run_config.RunConfig:
  """The `RunConfig` of the parsed `--config` (a `UsageError` for a refused value)."""
  try:
    return run_config.from_config_dict(config)
  except (ValueError, KeyError, TypeError) as e:
    raise UsageError(_message(e)) from e


class _QuietLibraries:
  """Keeps the libraries' INFO lines out of the user's console: orbax, TFDS and grain log per
  save or read, and jax logs each backend it probes ("Unable to initialize backend 'tpu':
  ... Failed to open libtpu.so" on every machine without a TPU)."""

  def filter(self, record) -> bool:
    noisy = any(
      f"{os.sep}{lib}{os.sep}" in record.pathname
      for lib in ("orbax", "tensorflow_datasets", "grain", "etils", "absl", "jax")
    )
    return record.levelno >= std_logging.WARNING or not noisy


def quiet_libraries() -> None:
  """Only warnings from the libraries underneath reach the console."""
  from absl import logging  # pylint: disable=g-import-not-at-top

  logging.get_absl_handler().addFilter(_QuietLibraries())


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)` with this module's help, mistakes and exit statuses."""

  def guarded(argv):
    quiet_libraries()
    try:
      main(argv)
    except UsageError as e:
      fail(str(e))
    except (preemption.Stopped, preemption.Interrupted) as e:
      print(str(e), file=sys.stderr, flush=True)
      sys.exit(e.exit_status)
    except KeyboardInterrupt:
      print("interrupted by SIGINT; nothing was lost: rerun the same command", file=sys.stderr)
      sys.exit(130)
    except _EXPECTED as e:
      fail(f"{type(e).__name__}: {e}")

  app.run(guarded, flags_parser=_parse)
