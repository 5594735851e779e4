r"""Pathfinder-32: are the two dots connected? (32 x 32 = 1024 pixel tokens, 2 classes).

  python -m lra.prepare --task=pathfinder32 --data_dir=~/lra_data   # generates 200k images
  python -m lra.main --config=configs/pathfinder32.py --workdir=/tmp/pathfinder32_mra2

For mra2/mra2_s, `token_order="auto"` puts the pixels in 4x8 tiles around attention.

Variants:
  (default)     MRA-paper protocol (docs/lra.md "Protocols"): 2 layers x 64, batch 256, 62400
                steps, OneCycle 1e-4 with warmup 312. Expected accuracy: the Nystromformer paper
                reports about 70-75 % for softmax. Not yet measured with this code.
  protocol=lra  The original LRA base config for this size (the LRA release). Not yet measured
                with this code.
  smoke         40 steps on whatever is prepared in data_dir (needs the data).
"""

from configs import pathfinder_common


def get_config(arg: str | None = None):
  return pathfinder_common.get_config(32, arg, grad_accum_steps=1)
