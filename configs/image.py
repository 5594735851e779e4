r"""Image: grayscale CIFAR-10 as 1024 pixel tokens (10 classes).

  python -m lra.prepare --task=image --data_dir=~/lra_data   # needs cifar-10-python.tar.gz
  python -m lra.main --config=configs/image.py --workdir=/tmp/image_mra2

For mra2/mra2_s, `token_order="auto"` puts the pixels in 4x8 tiles around attention, so each
32-token block is a 2-D patch (the published setting, `input_shape=[32, 32]`).

Variants:
  (default)     MRA-paper protocol (docs/lra.md "Protocols"): 2 layers x 64, batch 256, 35000
                steps, OneCycle 1e-4 with warmup 175. Expected accuracy: the Nystromformer paper
                reports about 38-42 % for softmax. Not yet measured with this code.
  protocol=lra  Original LRA config (the LRA paper's release): 1 layer, emb 128, qkv 64, 8
                heads, CLS, dropout 0.3, LR 5e-4 cosine, warmup 175. Leaderboard: Transformer
                42.44 %. Not yet measured with this code.
  smoke         40 steps on whatever is prepared in data_dir (needs the data).
"""

from configs import common

MRA = {
  "max_length": 1024,
  "batch_size": 256,
  "learning_rate": 1e-4,
  "num_train_steps": 35_000,
  "eval_every_steps": 175,
  "num_eval_batches": 20,
  "optimizer.schedule": "one_cycle",
  "optimizer.warmup_steps": 175,
}
LRA = {
  "max_length": 1024,
  "batch_size": 256,
  "learning_rate": 5e-4,
  "num_train_steps": 35_000,
  "eval_every_steps": 175,
  "num_eval_batches": 39,
  "model.num_layers": 1,
  "model.embed_dim": 128,
  "model.qkv_dim": 64,
  "model.num_heads": 8,
  "model.mlp_dim": 128,
  "model.classifier_hidden": (128,),
  "model.dropout_rate": 0.3,
  "model.pooling": "cls",
  "model.positions": "learned",
  "model.embed_init_std": 1.0,
  "optimizer.schedule": "cosine",
  "optimizer.warmup_steps": 175,
  **common.LRA_OPTIMIZER,
}
ATTENTION = {
  "mra2": {"initial_prior_first_n_blocks": 1, "initial_prior_diagonal_n_blocks": 0},
  "mra2_s": {"initial_prior_first_n_blocks": 0, "initial_prior_diagonal_n_blocks": 1},
  "yoso": {"hash_code_len": 10},
}
SMOKE = common.smoke()


def get_config(arg: str | None = None):
  return common.make_config(
    "image", arg, mra=MRA, lra=LRA, attention_overrides=ATTENTION, smoke_overrides=SMOKE
  )
