r"""Samples bytes from a trained language-model run: python -m lra.generate --workdir=DIR.

  python -m lra.generate --workdir=/tmp/lm_mra2 --prompt="def main(" --max_new_bytes=200
  python -m lra.generate --workdir=/tmp/lm_mra2 --prompt_file=start.py --temperature=0

Restores the run's best checkpoint, runs the prompt (after the document separator, as a
file starts in training) as one prefill, then one jitted decode step per byte through each
layer's cache, until the end of the document (the separator) or --max_new_bytes. Prints the
prompt and sample, then the speed; appends the sample, its settings and bytes/s to
<workdir>/generation.json, and puts it in a finished run's results.json ("generation").
See docs/lm.md.
"""

import sys

from absl import flags

from lra import cli, sampling

_WORKDIR = flags.DEFINE_string("workdir", None, "The workdir of an LM run (configs/lm.py).")
_PROMPT = flags.DEFINE_string("prompt", "", "Text the sample continues (UTF-8).")
_PROMPT_FILE = flags.DEFINE_string(
  "prompt_file", None, "A file whose bytes are the prompt (instead of --prompt)."
)
_MAX_NEW_BYTES = flags.DEFINE_integer("max_new_bytes", 256, "Bytes to sample at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Sampling temperature; 0: greedy.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the sampling.")


def _prompt() -> bytes:
  if _PROMPT_FILE.value is None:
    return _PROMPT.value.encode("utf-8", "surrogateescape")
  if _PROMPT.value:
    raise cli.UsageError("give --prompt or --prompt_file, not both")
  try:
    with open(_PROMPT_FILE.value, "rb") as f:
      return f.read()
  except OSError as e:
    raise cli.UsageError(f"--prompt_file={_PROMPT_FILE.value}: {e.strerror}") from e


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}")
  if not _WORKDIR.value:
    raise cli.UsageError("--workdir=DIR (an LM run) is required")
  try:
    restored = sampling.restore(_WORKDIR.value)
    out = sampling.generate(
      restored,
      _prompt(),
      max_new_bytes=_MAX_NEW_BYTES.value,
      temperature=_TEMPERATURE.value,
      seed=_SEED.value,
    )
  except sampling.GenerationError as e:
    raise cli.UsageError(str(e)) from e
  path = sampling.record(_WORKDIR.value, out)
  print(out["prompt"] + out["sample"], flush=True)
  end = "the end of the document" if out["stopped_at_separator"] else "max_new_bytes"
  print(
    f"--- {out['new_bytes']} bytes (stopped at {end}) at {out['bytes_per_sec']} bytes/s on "
    f"{out['device']} ({out['attention']}, checkpoint step {out['checkpoint_step']}); "
    f"appended to {path}",
    file=sys.stderr,
    flush=True,
  )


if __name__ == "__main__":
  cli.run(main)
