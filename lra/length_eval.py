"""Test bits per byte at other model lengths, `RunConfig.eval_lengths`: does more context help?

The LM task's decoder has no weight tied to a length (rotary positions, `lra.decoder`), so the
best checkpoint, trained at `max_length`, runs unchanged on the test windows of any length L.
Every length predicts the same bytes, all of the test stream but its first (windows of L + 1
bytes at stride L, `lra.data.corpus`); what changes is the context: byte k of a window is
predicted from the k bytes before it in that window, L / 2 on average. So a lower figure at a
larger L means the model uses the longer context.

The windows of a length are prepared where missing, from the corpus and split sizes that the
run's own data was made from (its `lra_source.json`); a corpus whose fingerprint differs from
the run's is refused. The batch at length L holds about as many bytes as the run's evaluation
batch (rows scaled by max_length / L, at least one per device).
"""

from __future__ import annotations

import jax

from lra import evaluation, inputs, provenance, run_config
from lra.data import builders, errors, prepare_lib


def batch_size(run: run_config.RunConfig, length: int) -> int:
  """Rows per evaluation batch at `length`: about the run's bytes per batch, a multiple of
  the device count."""
  devices = jax.device_count()
  rows = max(1, run.eval_batch_size * run.max_length // length)
  return -(-rows // devices) * devices


def _ensure_windows(run: run_config.RunConfig, data_dir: str, length: int, source: dict) -> None:
  """The test windows of `length` from the run's corpus, prepared if missing."""
  spec = run.task_spec.for_length(length)
  if not prepare_lib.is_prepared(spec, data_dir):
    prepare_lib.prepare(
      spec,
      data_dir,
      source=None if source["corpus"] == "python-stdlib" else source["root"],
      num_train=source["sizes"][0],
      num_val=source["sizes"][1],
      num_test=source["sizes"][2],
      progress=False,
    )
  inputs.ensure_data(run, data_dir, spec)  # Checks the digests.
  made_from = prepare_lib.source_record(spec, data_dir) or {}
  if (made_from.get("fingerprint"), made_from.get("sizes")) != (
    source["fingerprint"],
    source["sizes"],
  ):
    raise errors.DataCorruptError(
      f"{builders.version_dir(spec, data_dir)} holds windows of another corpus or sizes "
      f"(fingerprint {made_from.get('fingerprint')}, sizes {made_from.get('sizes')}) than the "
      f"run's data (fingerprint {source['fingerprint']}, sizes {source['sizes']}); delete it "
      "or use another data_dir"
    )


def evaluate_lengths(
  run: run_config.RunConfig, data_dir: str, eval_step, params, rest, sharding, objective
) -> dict[int, dict]:
  """{length: the objective's test metrics at that length} for `run.eval_lengths` (the
  training length left out: the run's test already measured it).

  Raises:
    errors.DataNotFoundError: the run's data does not record its corpus (`lra_source.json`).
    errors.DataCorruptError: prepared windows of a length come from another corpus.
  """
  source = prepare_lib.source_record(run.task_spec, data_dir)
  if source is None:
    raise errors.DataNotFoundError(
      f"{builders.version_dir(run.task_spec, data_dir)} does not record the corpus it was "
      "made from, so windows of other lengths cannot be made to match; prepare it again with "
      f"{errors.prepare_command(run.task, data_dir, max_tokens=run.max_length)} --overwrite"
    )
  out = {}
  for length in sorted(set(run.eval_lengths) - {run.max_length}):
    _ensure_windows(run, data_dir, length, source)
    rows = batch_size(run, length)
    loader = inputs.make_loader(run, data_dir, "test", batch_size=rows, train=False, length=length)
    metrics = evaluation.evaluate(
      eval_step, params, rest, loader, batch_size=rows, num_batches=-1, sharding=sharding
    )
    version_dir = builders.version_dir(run.task_spec.for_length(length), data_dir)
    out[length] = {
      **objective.summarise(metrics),
      "data_fingerprint": provenance.data_fingerprint(version_dir)["fingerprint"],
    }
  return out


def summary(run: run_config.RunConfig, test: dict, by_length: dict[int, dict]) -> dict:
  """results.json's `test_at_lengths`: {str(length): bits per byte, next-byte accuracy,
  bytes, and the data fingerprint of the other lengths}, the training length included."""
  rows = {run.max_length: {**test, "trained_length": True}, **by_length}
  return {
    str(length): {
      key: value
      for key, value in (
        ("bits_per_byte", m["bits_per_byte"]),
        ("accuracy", m["accuracy"]),
        ("num_bytes", m["num_predictions"]),
        ("num_examples", m["num_examples"]),
        ("data_fingerprint", m.get("data_fingerprint")),
        ("trained_length", m.get("trained_length", False)),
      )
      if value is not None
    }
    for length, m in sorted(rows.items())
  }
