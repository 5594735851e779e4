r"""Byte-level language modelling on the Python standard library's sources (docs/lm.md).

  python -m lra.main --config=configs/lm.py:smoke --workdir=/tmp/lm_smoke     # CPU, ~1 min
  python -m lra.main --config=configs/lm.py:cpu,attention=mra2 --workdir=/tmp/lm_mra2
  python -m lra.main --config=configs/lm.py:cpu,attention=local --workdir=/tmp/lm_local
  python -m lra.main --config=configs/lm.py:cpu,attention=softmax --workdir=/tmp/lm_softmax
  python -m lra.main --config=configs/lm.py:attention=mra2 --workdir=/tmp/lm_gpu_mra2  # GPU
  python -m lra.generate --workdir=/tmp/lm_mra2 --prompt="def main(" --max_new_bytes=200

The data (windows of max_length + 1 bytes of the running Python's standard library, split
90/5/5 by a hash of each file's path) is prepared into data_dir on the first run (about 4 s
for the whole library); `python -m lra.prepare --task=lm --data_dir=DIR --max_tokens=W`
does it by hand. Only causal attentions run here: softmax, local, mra2, mra2_s (is_causal is
forced on). At equal tiles: local's window_size = mra2's block_per_row * block_size key
positions per query.

Variants (after the colon, comma-separated):
  (default)  GPU protocol: length 4096, 6 layers x 256 (4 heads x 64, MLP 1024), batch 32,
             20000 steps, AdamW (0.9, 0.95, wd 0.01) with cosine decay from 1e-3 after 1000
             warmup steps, clip 1.0; mra2 8 blocks of 32 per row, local window 256; test bits
             per byte also at lengths 8192 and 16384. Not yet measured.
  cpu        Length 2048, 2 layers x 64 (2 heads x 32, MLP 256), batch 8, 300 steps, cosine
             from 2e-3; mra2 4 blocks of 32 per row, local window 128; validation on 64 KiB
             every 50 steps, test on 128 KiB at 2048, 4096 and 8192. Sized from short runs
             (30 steps) measured 2026-12-06 on a 2-core CPU VM shared with other jobs:
             softmax 0.13-0.16 steps/s at load 6-8.5 (300 steps in 31-38 min, plus about 4
             min of evaluation; 0.34 steps/s at load 2.5-4.7), local 0.56-0.88 steps/s (6-9
             min), mra2 1.03-1.10 steps/s at load 7.5 (5 min). Expected bits per byte: not yet
             measured (docs/lm.md, "The comparison").
  smoke      Length 256, 1 layer x 32, 20 steps at batch 8 on 128 KiB of train bytes; test
             also at length 512. 17 s end to end on 2 CPU cores (softmax, measured
             2026-12-06); checks that every stage runs, not that the model learns.
"""

from configs import common

# From the measured speed of the slowest attention, softmax (module docstring).
CPU_STEPS = 300

LM = {
  "data_dir": "~/lra_data",
  "generate_data": True,  # The corpus is on every machine: the run prepares what it lacks.
  "generate_sizes": (-1, -1, -1),
  "max_length": 4096,
  "batch_size": 32,
  "learning_rate": 1e-3,
  "num_train_steps": 20_000,
  "eval_every_steps": 1000,
  "num_eval_batches": -1,
  "checkpoint_every_steps": 1000,
  "log_every_steps": 50,
  "token_order": "row_major",
  "eval_lengths": (8192, 16384),
  "model.num_layers": 6,
  "model.embed_dim": 256,
  "model.qkv_dim": 256,
  "model.num_heads": 4,
  "model.mlp_dim": 1024,
  "model.dropout_rate": 0.0,
  "model.positions": "rope",
  "optimizer.schedule": "cosine",
  "optimizer.warmup_steps": 1000,
  "optimizer.weight_decay": 0.01,
  "optimizer.b2": 0.95,
  "optimizer.eps": 1e-8,
  "optimizer.cycle_momentum": False,
  "optimizer.grad_clip_norm": 1.0,
  "expected_result": "not yet measured",
}
# Equal tiles: local's window covers block_per_row * block_size key positions, as many as
# a causal MRA row computes exactly. Causal MRA always keeps the previous block (diagonal
# prior 3: the block before the diagonal).
ATTENTION = {
  "softmax": {"is_causal": True},
  "local": {"is_causal": True, "window_size": 8 * 32},
  "mra2": {"is_causal": True, "block_per_row": 8, "initial_prior_diagonal_n_blocks": 3},
  "mra2_s": {"is_causal": True, "block_per_row": 8, "initial_prior_diagonal_n_blocks": 3},
}
CPU = {
  "data_dir": "",
  "max_length": 2048,
  "batch_size": 8,
  "eval_batch_size": 8,
  "num_train_steps": CPU_STEPS,
  "learning_rate": 2e-3,
  "eval_every_steps": 50,
  "checkpoint_every_steps": 50,
  "log_every_steps": 10,
  "optimizer.warmup_steps": 30,
  # Validation and test: 64 and 128 KiB of their splits (hash-ordered subsets of their
  # files, the same bytes at every length), so one evaluation costs a few steps.
  "generate_sizes": (-1, 64 * 1024, 128 * 1024),
  "eval_lengths": (4096, 8192),
  "model.num_layers": 2,
  "model.embed_dim": 64,
  "model.qkv_dim": 64,
  "model.num_heads": 2,
  "model.mlp_dim": 256,
  "attention_kwargs": {
    "local": {"window_size": 4 * 32},
    "mra2": {"block_per_row": 4},
    "mra2_s": {"block_per_row": 4},
  },
  "expected_result": (
    "test bits per byte about 3.2-3.6 at 2048 (measured at seeds 0 and 1: softmax 3.39 and "
    "3.60, local 3.23 and 3.26, mra2 3.26 and 3.45, mra2_s 3.24 and 3.31; docs/lm.md)"
  ),
}
SMOKE = common.smoke(
  data_dir="",
  generate_sizes=(128 * 1024, 16 * 1024, 16 * 1024),
  max_length=256,
  num_train_steps=20,
  eval_every_steps=10,
  checkpoint_every_steps=10,
  learning_rate=5e-3,
  batch_size=8,
  eval_batch_size=8,
  eval_lengths=(512,),
  **{
    "model.num_layers": 1,
    "model.embed_dim": 32,
    "model.qkv_dim": 32,
    "model.num_heads": 2,
    "model.mlp_dim": 64,
    "attention_kwargs": {
      "local": {"window_size": 2 * 32},
      "mra2": {"block_per_row": 2},
      "mra2_s": {"block_per_row": 2},
    },
  },
  expected_result="about 5-6 bits per byte at smoke scale (uniform bytes: 8): a few steps "
  "check that every stage runs, not that the model learns much",
)


def get_config(arg: str | None = None):
  return common.make_config(
    "lm",
    arg,
    mra=LM,
    lra=None,
    attention_overrides=ATTENTION,
    smoke_overrides=SMOKE,
    cpu_overrides=CPU,
    protocols=("lm",),
  )
