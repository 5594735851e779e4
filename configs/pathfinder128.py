r"""Pathfinder-128: are the two dots connected? (128 x 128 = 16384 pixel tokens, 2 classes).

  python -m lra.prepare --task=pathfinder128 --data_dir=~/lra_data   # generates 200k images
  python -m lra.main --config=configs/pathfinder128.py --workdir=/tmp/pathfinder128_mra2

For mra2/mra2_s, `token_order="auto"` puts the pixels in 4x8 tiles around attention.

Variants:
  (default)     Path-X. Pathfinder-32's MRA-paper numbers at 128x128 (the paper has no such run;
                our choice), 4 micro-batches per step. LRA: every model FAILs (chance, 50 %).
                Not yet measured with this code.
  protocol=lra  The original LRA base config for this size (the LRA release). Not yet measured
                with this code.
  smoke         40 steps on whatever is prepared in data_dir (needs the data).
"""

from configs import pathfinder_common


def get_config(arg: str | None = None):
  return pathfinder_common.get_config(128, arg, grad_accum_steps=4)
