"""Pathfinder numbers shared by the four resolutions (configs/pathfinder{32,64,128,256}.py)."""

from configs import common

# MRA-paper protocol for Pathfinder-32. The paper has no larger Pathfinder runs; the other
# sizes reuse these numbers (our choice), at their own length, with gradient accumulation
# for memory.
MRA = {
  "batch_size": 256,
  "learning_rate": 1e-4,
  "num_train_steps": 62_400,
  "eval_every_steps": 312,
  "num_eval_batches": 312,
  "optimizer.schedule": "one_cycle",
  "optimizer.warmup_steps": 312,
}
ATTENTION = {
  "mra2": {"initial_prior_first_n_blocks": 1, "initial_prior_diagonal_n_blocks": 0},
  "mra2_s": {"initial_prior_first_n_blocks": 1, "initial_prior_diagonal_n_blocks": 1},
  "yoso": {"hash_code_len": 10},
}
# The original LRA base configs: AdamW(0.9, 0.98, 1e-9), linear warmup x cosine decay.
_LRA_COMMON = {
  "learning_rate": 1e-3,
  "model.embed_dim": 32,
  "model.qkv_dim": 16,
  "model.mlp_dim": 32,
  "model.classifier_hidden": (32,),
  "model.embed_init_std": 1.0,
  "optimizer.schedule": "cosine",
  **common.LRA_OPTIMIZER,
}
LRA = {
  32: {
    **_LRA_COMMON,
    "max_length": 1024,
    "batch_size": 512,
    "num_train_steps": 62_400,
    "eval_every_steps": 312,
    "num_eval_batches": 39,
    "model.num_layers": 4,
    "model.num_heads": 4,
    "model.dropout_rate": 0.2,
    "model.pooling": "mean",
    "model.positions": "sinusoidal",
    "optimizer.warmup_steps": 312,
  },
  # Pathfinder-64 base: 2 layers, 4 heads, batch 256, CLS, 200 epochs of 160k images.
  64: {
    **_LRA_COMMON,
    "max_length": 4096,
    "batch_size": 256,
    "num_train_steps": 125_000,
    "eval_every_steps": 625,
    "num_eval_batches": 78,
    "model.num_layers": 2,
    "model.num_heads": 4,
    "model.pooling": "cls",
    "model.positions": "learned",
    "optimizer.warmup_steps": 625,
  },
  128: {
    **_LRA_COMMON,
    "max_length": 16_384,
    "batch_size": 64,
    "num_train_steps": 500_000,
    "eval_every_steps": 2500,
    "num_eval_batches": 312,
    "model.num_layers": 1,
    "model.num_heads": 2,
    "model.pooling": "mean",
    "model.positions": "learned",
    "optimizer.warmup_steps": 2500,
    "optimizer.grad_clip_norm": 1.0,
  },
  # Pathfinder-256 base: 2 layers, batch 32, 100 epochs, CLS.
  256: {
    **_LRA_COMMON,
    "max_length": 65_536,
    "batch_size": 32,
    "num_train_steps": 500_000,
    "eval_every_steps": 5000,
    "num_eval_batches": 625,
    "model.num_layers": 2,
    "model.num_heads": 2,
    "model.pooling": "cls",
    "model.positions": "learned",
    "optimizer.warmup_steps": 5000,
    "optimizer.grad_clip_norm": 1.0,
  },
}


def get_config(size: int, arg: str | None, grad_accum_steps: int):
  mra = {**MRA, "max_length": size * size}
  config = common.make_config(
    f"pathfinder{size}",
    arg,
    mra=mra,
    lra=LRA[size],
    attention_overrides=ATTENTION,
    smoke_overrides=common.smoke(),
  )
  if config.protocol == "mra" and not common.parse_arg(arg).smoke:
    config.grad_accum_steps = grad_accum_steps
  return config
