r"""ListOps on one accelerator in one command: official-size data, then MRA-2 and softmax.

  python -m lra.gpu_run --out=/tmp/lra_gpu              # the MRA paper's ListOps protocol
  python -m lra.gpu_run --out=/tmp/lra_gpu --steps=2500 # a shorter schedule
  python -m lra.gpu_run --out=/tmp/lra_tiny --tiny      # tiny data, a few steps (CPU, CI)

Run from a checkout: the protocol is `--config` (default configs/listops.py).

1. Generates the official-size ListOps (96,000 / 2,000 / 2,000, seed 0) into `OUT/data`
   with one generator process per core (`--workers`); the data is the same for any count.
   Data already there is checked against its digests and reused.
2. Trains `configs/listops.py` (default protocol) for each attention of `--attentions`
   into `OUT/<attention>/`, each writing its results.json (test accuracy of the best-dev
   checkpoint, provenance: commit, software, device, data fingerprint). A workdir that
   holds a run resumes it; a finished one reports its result again.
3. Writes `OUT/summary.json`: seconds spent generating, and per attention the test and best
   dev accuracy, the best step, steps/s and seconds of training.

See docs/gpu.md, "LRA on one GPU", for the expected time.
"""

import json
import os
import time

from absl import flags, logging

from lra import cli, inputs, reporting, run_config, train
from lra.data import prepare_lib

_OUT = flags.DEFINE_string("out", None, "Folder for the data, the runs and summary.json.")
_CONFIG = flags.DEFINE_string(
  "config", "configs/listops.py", "The ListOps config file (its default protocol is run)."
)
_ATTENTIONS = flags.DEFINE_list("attentions", ["mra2", "softmax"], "Attentions to train.")
_STEPS = flags.DEFINE_integer("steps", 0, "Train steps (0: the protocol's 5000).")
_WORKERS = flags.DEFINE_integer(
  "workers", 0, "Data generation processes (0: every core); training uses the config default."
)
_DATA_WORKERS = flags.DEFINE_integer(
  "data_workers", -1, "Training input processes (-1: the config's default, from the core count)."
)
_TINY = flags.DEFINE_boolean(
  "tiny", False, "Tiny data and model, a few steps: checks the command end to end on a CPU."
)

# (train, validation, test) examples and longest expression of the tiny variant.
TINY_SIZES = (96, 32, 32)
TINY_MAX_TOKENS = 64


def listops_run(
  attention: str,
  data_dir: str,
  *,
  steps: int = 0,
  tiny: bool = False,
  data_workers: int = -1,
  config_file: str = "configs/listops.py",
) -> run_config.RunConfig:
  """The config of one run of this command: `config_file`'s default protocol for `attention`.

  Unchanged except for `data_dir`, `steps` (> 0 replaces num_train_steps), no plot and the
  input workers; `tiny` shrinks data, model and schedule to seconds on a CPU.
  """
  c, _ = cli.load_config_file(f"{config_file}:attention={attention}")
  c.data_dir = data_dir
  c.plot = False
  c.data_workers = data_workers
  if steps:
    c.num_train_steps = steps
  if tiny:
    c.max_length = TINY_MAX_TOKENS
    c.batch_size = c.eval_batch_size = 8
    c.num_train_steps = steps or 6
    c.eval_every_steps = c.checkpoint_every_steps = 3
    c.num_eval_batches = -1
    c.log_every_steps = 1
    c.optimizer.warmup_steps = 2
    c.learning_rate = 1e-3
    c.check_memory = False
    c.expected_result = "no particular accuracy: a tiny run only checks the command end to end"
    c.model.update(
      num_layers=1, embed_dim=16, qkv_dim=16, num_heads=2, mlp_dim=32, classifier_hidden=(16,)
    )
    # 64 tokens are 2 blocks of 32: mra2 refines one of them.
    if "block_per_row" in c.attention_kwargs:
      c.attention_kwargs.block_per_row = 1
  return run_config.from_config_dict(c)


def prepare_data(data_dir: str, *, tiny: bool, workers: int) -> float:
  """Generates (or checks) the ListOps data; returns the seconds it took."""
  start = time.time()
  if tiny:
    n_train, n_val, n_test = TINY_SIZES
    prepare_lib.prepare(
      "listops",
      data_dir,
      num_train=n_train,
      num_val=n_val,
      num_test=n_test,
      max_tokens=TINY_MAX_TOKENS,
      workers=workers,
      seed=inputs.DATA_SEED,
      progress=False,
    )
  else:
    prepare_lib.prepare("listops", data_dir, workers=workers, seed=inputs.DATA_SEED, progress=False)
  return time.time() - start


def run(
  out: str,
  attentions: list[str],
  *,
  steps: int = 0,
  tiny: bool = False,
  workers: int = 0,
  data_workers: int = -1,
  config_file: str = "configs/listops.py",
) -> dict:
  """Generates the data, trains every attention, writes and returns the summary."""
  if not attentions:
    raise cli.UsageError("--attentions must name at least one attention; got none")
  if steps < 0:
    raise cli.UsageError(f"--steps must be >= 0; got steps={steps}")
  if workers < 0:
    raise cli.UsageError(f"--workers must be >= 0; got workers={workers}")
  out = os.path.abspath(os.path.expanduser(out))
  configs = {
    name: listops_run(
      name,
      os.path.join(out, "data"),
      steps=steps,
      tiny=tiny,
      data_workers=data_workers,
      config_file=config_file,
    )
    for name in attentions
  }
  summary = {
    "data_seconds": round(prepare_data(os.path.join(out, "data"), tiny=tiny, workers=workers), 1)
  }
  logging.info("ListOps data ready in %.1f s", summary["data_seconds"])
  runs = {}
  for name, config in configs.items():
    start = time.time()
    results = train.train_and_evaluate(config, os.path.join(out, name))
    seconds = results["train_seconds_this_session"]
    runs[name] = {
      "test_accuracy": results["test_accuracy"],
      "best_validation_accuracy": results["best_validation_accuracy"],
      "best_step": results["best_step"],
      "num_train_steps": config.num_train_steps,
      "steps_this_session": results["steps_this_session"],
      "train_seconds_this_session": seconds,
      "steps_per_sec": round(results["steps_this_session"] / seconds, 2) if seconds else None,
      "wall_seconds": round(time.time() - start, 1),
      "device_kind": results["device_kind"],
      "results": os.path.join(out, name, train.RESULTS_FILE),
    }
    print(reporting.result_line(results, os.path.join(out, name)), flush=True)
  summary["runs"] = runs
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments {argv[1:]}")
  if not _OUT.value:
    raise cli.UsageError("--out=DIR is required")
  run(
    _OUT.value,
    _ATTENTIONS.value,
    steps=_STEPS.value,
    tiny=_TINY.value,
    workers=_WORKERS.value,
    data_workers=_DATA_WORKERS.value,
    config_file=_CONFIG.value,
  )
  print(f"summary in {os.path.join(os.path.abspath(_OUT.value), 'summary.json')}", flush=True)


if __name__ == "__main__":
  cli.run(main)
