r"""Pathfinder-256: are the two dots connected? (256 x 256 = 65536 pixel tokens, 2 classes).

  python -m lra.prepare --task=pathfinder256 --data_dir=~/lra_data   # generates 200k images
  python -m lra.main --config=configs/pathfinder256.py --workdir=/tmp/pathfinder256_mra2

For mra2/mra2_s, `token_order="auto"` puts the pixels in 4x8 tiles around attention.

Variants:
  (default)     Pathfinder-32's MRA-paper numbers at 256x256 (our choice), 16 micro-batches per
                step. Not yet measured with this code.
  protocol=lra  The original LRA base config for this size (the LRA release). Not yet measured
                with this code.
  smoke         40 steps on whatever is prepared in data_dir (needs the data).
"""

from configs import pathfinder_common


def get_config(arg: str | None = None):
  return pathfinder_common.get_config(256, arg, grad_accum_steps=16)
