"""mra_jax: multi-resolution attention for JAX/Flax.

Shape letters used in names throughout the package (nanodo style):
B batch, L length (Lq/Lk for queries/keys), H heads, D head dim, E model width,
N blocks per row (= L / block size; Nq/Nk), K selected high-resolution tiles per
(batch, head), Bs block size.
"""

from mra_jax.attention import MraConfig as MraConfig
from mra_jax.attention import mra_attention as mra_attention
from mra_jax.flax_attention import make_attention_fn as make_attention_fn
from mra_jax.layers import MraSelfAttention as MraSelfAttention
from mra_jax.layout import from_patch_order as from_patch_order
from mra_jax.layout import to_patch_order as to_patch_order
