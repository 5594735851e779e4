r"""Retrieval: AAN citation matching, two documents of up to 4096 bytes each (2 classes).

  python -m lra.prepare --task=retrieval --data_dir=~/lra_data   # needs lra_release tsv_data
  python -m lra.main --config=configs/retrieval.py --workdir=/tmp/retrieval_mra2

The model is a two-tower encoder with shared weights; the head reads [u, v, u*v, u-v].

Variants:
  (default)     MRA-paper protocol (docs/lra.md "Protocols"): 2 layers x 64, length 4096 per
                document, batch 32, 30000 steps, OneCycle 1e-4 with warmup 800. Expected
                accuracy: the Nystromformer paper reports about 79 % for softmax. Not yet
                measured here.
  protocol=lra  Original LRA config (the LRA paper's release): 4 layers x 128, 4 heads, length
                4000, CLS, head on [u, v] -> 512 -> 256, LR 0.05 rsqrt, warmup 8000, 5000 steps.
                Leaderboard: Transformer 57.46 %. Not yet measured with this code.
  smoke         40 steps at length 256 on whatever is prepared in data_dir (needs the data).
"""

from configs import common

MRA = {
  "max_length": 4096,
  "batch_size": 32,
  "learning_rate": 1e-4,
  "num_train_steps": 30_000,
  "eval_every_steps": 300,
  "num_eval_batches": 565,
  "optimizer.schedule": "one_cycle",
  "optimizer.warmup_steps": 800,
}
LRA = {
  "max_length": 4000,
  "batch_size": 32,
  "learning_rate": 0.05,
  "num_train_steps": 5000,
  "eval_every_steps": 100,
  "num_eval_batches": -1,
  "model.num_layers": 4,
  "model.embed_dim": 128,
  "model.qkv_dim": 128,
  "model.num_heads": 4,
  "model.mlp_dim": 512,
  "model.classifier_hidden": (512, 256),
  "model.pooling": "cls",
  "model.positions": "sinusoidal",
  "model.embed_init_std": 1.0,
  "model.retrieval_interaction": "concat",
  "optimizer.schedule": "rsqrt",
  "optimizer.warmup_steps": 8000,
  "optimizer.weight_decay": 0.1,
  **common.LRA_OPTIMIZER,
}
ATTENTION = {
  "mra2": {"initial_prior_first_n_blocks": 1, "initial_prior_diagonal_n_blocks": 1},
  "mra2_s": {"initial_prior_first_n_blocks": 1, "initial_prior_diagonal_n_blocks": 1},
  "yoso": {"hash_code_len": 12},
}
SMOKE = common.smoke(max_length=256)


def get_config(arg: str | None = None):
  return common.make_config(
    "retrieval", arg, mra=MRA, lra=LRA, attention_overrides=ATTENTION, smoke_overrides=SMOKE
  )
