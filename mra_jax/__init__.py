"""mra_jax: multi-resolution attention for JAX/Flax.

Shape letters used in names throughout the package (nanodo style):
B batch, L length (Lq/Lk for queries/keys), H heads, D head dim, N blocks per
row (= L / block size; Nq/Nk), K selected high-resolution tiles per (batch, head),
Bs block size.
"""

from mra_jax.attention import MraConfig as MraConfig
from mra_jax.attention import mra_attention as mra_attention
