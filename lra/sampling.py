"""Bytes from a trained LM run: restore its best checkpoint, prefill a prompt, decode a byte
per step through each layer's cache (`lra.decoder.Decoder.decode`, `lra.decode_cache`).

The prompt follows the document separator (byte 0), as every document does in training, so
the model continues it as the start of a file; sampling stops at the next separator (the end
of that file) or after `max_new_bytes`. The prompt and the sample share the model's length:
1 + len(prompt) + max_new_bytes <= max_length (the caches hold that many positions).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
from flax import nnx

from lra import checkpoints, models, train
from lra.data import corpus

GENERATION_FILE = "generation.json"


class GenerationError(ValueError):
  """A generation request that cannot be served; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Restored:
  """A run's config, its model's graph, and the best checkpoint's parameters."""

  run: object  # lra.run_config.RunConfig
  graphdef: object
  params: object
  rest: object
  step: int


def restore(workdir: str) -> Restored:
  """The best checkpoint of the LM run in `workdir`.

  Raises:
    GenerationError: not a run directory, a run of another task, or no best checkpoint yet.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    run = checkpoints.load_config(workdir)
  except FileNotFoundError as e:
    raise GenerationError(str(e)) from e
  if run.task_spec.objective != "next_token":
    raise GenerationError(
      f"workdir={workdir!r} holds a run of task {run.task!r}, not of the language-model task "
      "(train one with --config=configs/lm.py)"
    )
  best_dir = os.path.join(workdir, "best")
  steps = [d for d in os.listdir(best_dir) if d.isdigit()] if os.path.isdir(best_dir) else []
  if not steps:
    raise GenerationError(
      f"workdir={workdir!r} holds no finished checkpoint ({best_dir} is missing or empty: it "
      "is written at the first validation); train first, or wait for that validation"
    )
  cfg = run.model
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: models.build(cfg, rngs=nnx.Rngs(0))))
  # A fresh model, built in one compiled program, gives the parameters' shapes and placement.
  params_like, rest = jax.jit(
    lambda: tuple(nnx.split(models.build(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)[1:])
  )()
  ckpt = checkpoints.Checkpointer(workdir)
  try:
    params, meta = ckpt.restore_best(params_like)
  finally:
    ckpt.close()
  return Restored(run, graphdef, params, rest, int(meta["step"]))


def check_request(restored: Restored, prompt: bytes, max_new_bytes: int, temperature: float):
  """Raises GenerationError naming the argument that the model cannot serve."""
  length = restored.run.max_length
  if bytes([corpus.SEPARATOR]) in prompt:
    raise GenerationError(
      f"the prompt holds byte {corpus.SEPARATOR}, the document separator, which no document "
      f"contains; got byte 0 at offset {prompt.index(bytes([corpus.SEPARATOR]))}"
    )
  if 1 + len(prompt) > length:
    raise GenerationError(
      f"the prompt is {len(prompt)} bytes, longer than the model's length {length} allows "
      f"(the separator before it takes one position: at most {length - 1} bytes)"
    )
  if isinstance(max_new_bytes, bool) or not isinstance(max_new_bytes, int) or max_new_bytes < 1:
    raise GenerationError(f"max_new_bytes must be an int >= 1; got max_new_bytes={max_new_bytes!r}")
  if 1 + len(prompt) + max_new_bytes > length:
    raise GenerationError(
      f"the prompt ({len(prompt)} bytes) and max_new_bytes={max_new_bytes} exceed the "
      f"model's length {length} (at most {length - 1 - len(prompt)} new bytes after it)"
    )
  if not temperature >= 0:
    raise GenerationError(f"temperature must be >= 0 (0: greedy); got temperature={temperature!r}")


def _programs(restored: Restored, temperature: float):
  """(prefill, step), jitted: prefill(params, rest, ids_1xT, key) -> (first new byte [1],
  caches); step(params, rest, caches, byte [1], key, i) -> (byte i [1], caches), the key of
  byte i folded from `key` and i."""
  graphdef, length = restored.graphdef, restored.run.max_length

  def pick(logits_1xV, key):
    if temperature == 0:
      return jnp.argmax(logits_1xV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits_1xV / temperature).astype(jnp.int32)

  def prefill(params, rest, ids_1xT, key):
    model = nnx.merge(graphdef, params, rest)
    logits, caches = model.decode(ids_1xT, model.init_cache(1, length))
    return pick(logits[:, -1], jax.random.fold_in(key, 0)), caches

  def step(params, rest, caches, byte_1, key, i):
    model = nnx.merge(graphdef, params, rest)
    logits, caches = model.decode(byte_1[:, None], caches)
    return pick(logits[:, -1], jax.random.fold_in(key, i)), caches

  return jax.jit(prefill), jax.jit(step, donate_argnums=2)


def generate(
  restored: Restored, prompt: bytes, *, max_new_bytes: int, temperature: float, seed: int
) -> dict:
  """Samples up to `max_new_bytes` after `prompt` (stops at a document separator).

  Returns:
    {"prompt", "sample" (text, UTF-8 with replacement characters), "sample_bytes" (hex),
    "new_bytes", "stopped_at_separator", "max_new_bytes", "temperature", "seed",
    "bytes_per_sec" (decode steps, after compilation), "prefill_seconds" (with its
    compilation), "checkpoint_step",
    "attention", "device"}.

  Raises:
    GenerationError: a request the model cannot serve (`check_request`).
  """
  check_request(restored, prompt, max_new_bytes, temperature)
  prefill, step = _programs(restored, temperature)
  params, rest = restored.params, restored.rest
  ids = jnp.asarray([[corpus.SEPARATOR, *prompt]], jnp.int32)
  root = jax.random.key(seed)
  start = time.perf_counter()
  byte, caches = jax.block_until_ready(prefill(params, rest, ids, root))
  prefill_seconds = time.perf_counter() - start
  # Compiled before the clock starts: bytes/s measures decoding, not compilation.
  step_compiled = step.lower(params, rest, caches, byte, root, jnp.int32(1)).compile()
  out, stopped = [], False
  start = time.perf_counter()
  for i in range(max_new_bytes):
    value = int(byte[0])  # Waits for the step that made it.
    if value == corpus.SEPARATOR:
      stopped = True
      break
    out.append(value)
    if i + 1 < max_new_bytes:
      byte, caches = step_compiled(params, rest, caches, byte, root, jnp.int32(i + 1))
  seconds = time.perf_counter() - start
  sample = bytes(out)
  return {
    "prompt": prompt.decode("utf-8", "replace"),
    "sample": sample.decode("utf-8", "replace"),
    "sample_bytes": sample.hex(),
    "new_bytes": len(sample),
    "stopped_at_separator": stopped,
    "max_new_bytes": max_new_bytes,
    "temperature": temperature,
    "seed": seed,
    "bytes_per_sec": round(len(sample) / max(seconds, 1e-9), 2),
    "prefill_seconds": round(prefill_seconds, 3),
    "checkpoint_step": restored.step,
    "attention": restored.run.attention,
    "device": jax.devices()[0].device_kind,
  }


def record(workdir: str, generation: dict) -> str:
  """Appends `generation` to `<workdir>/generation.json` (every sample, a list) and, for a
  finished run, makes it `results.json`'s "generation" (the latest sample beside the run's
  figures). Returns the path of generation.json."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  path = os.path.join(workdir, GENERATION_FILE)
  entries = []
  if os.path.isfile(path):
    with open(path) as f:
      entries = json.load(f)
  _write_json(path, [*entries, generation])
  results_path = os.path.join(workdir, train.RESULTS_FILE)
  if os.path.isfile(results_path):
    with open(results_path) as f:
      results = json.load(f)
    _write_json(results_path, {**results, "generation": generation})
  return path


def _write_json(path: str, value) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=2)
  os.replace(path + ".tmp", path)
