"""Pathfinder numbers shared by the four resolutions (configs/pathfinder{32,64,128,256}.py)."""

import dataclasses

from configs import common

# MRA-paper protocol for Pathfinder-32 (mra.md §7). The paper has no larger Pathfinder runs;
# the other sizes reuse these numbers (our choice) with gradient accumulation for memory.
MRA = common.Protocol(
  max_length=1024,
  batch_size=256,
  learning_rate=1e-4,
  warmup_steps=312,
  num_train_steps=62_400,
  eval_every_steps=312,
  num_eval_batches=312,
  schedule="one_cycle",
)
ATTENTION = {
  "mra2": {"initial_prior_first_n_blocks": 1, "initial_prior_diagonal_n_blocks": 0},
  "mra2_s": {"initial_prior_first_n_blocks": 1, "initial_prior_diagonal_n_blocks": 1},
  "yoso": {"hash_code_len": 10},
}
# Original LRA base configs (lra.md §3.1.2): AdamW(0.9, 0.98, 1e-9), linear warmup x cosine.
_LRA_COMMON = dict(
  schedule="cosine",
  b2=0.98,
  eps=1e-9,
  cycle_momentum=False,
  embed_init_std=1.0,
  qkv_dim=16,
  mlp_dim=32,
  embed_dim=32,
  classifier_hidden=(32,),
  learning_rate=1e-3,
)
LRA = {
  32: common.Protocol(
    max_length=1024,
    batch_size=512,
    warmup_steps=312,
    num_train_steps=62_400,
    eval_every_steps=312,
    num_eval_batches=39,
    num_layers=4,
    num_heads=4,
    dropout_rate=0.2,
    pooling="mean",
    positions="sinusoidal",
    **_LRA_COMMON,
  ),
  # Pathfinder-64 base: 2 layers, 4 heads, batch 256, CLS, 200 epochs of 160k images.
  64: common.Protocol(
    max_length=4096,
    batch_size=256,
    warmup_steps=625,
    num_train_steps=125_000,
    eval_every_steps=625,
    num_eval_batches=78,
    num_layers=2,
    num_heads=4,
    pooling="cls",
    positions="learned",
    **_LRA_COMMON,
  ),
  128: common.Protocol(
    max_length=16_384,
    batch_size=64,
    warmup_steps=2500,
    num_train_steps=500_000,
    eval_every_steps=2500,
    num_eval_batches=312,
    num_layers=1,
    num_heads=2,
    pooling="mean",
    positions="learned",
    grad_clip_norm=1.0,
    **_LRA_COMMON,
  ),
  # Pathfinder-256 base: 2 layers, batch 32, 100 epochs, CLS.
  256: common.Protocol(
    max_length=65_536,
    batch_size=32,
    warmup_steps=5000,
    num_train_steps=500_000,
    eval_every_steps=5000,
    num_eval_batches=625,
    num_layers=2,
    num_heads=2,
    pooling="cls",
    positions="learned",
    grad_clip_norm=1.0,
    **_LRA_COMMON,
  ),
}


def get_config(size: int, arg: str | None, grad_accum_steps: int):
  mra = dataclasses.replace(MRA, max_length=size * size)
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
