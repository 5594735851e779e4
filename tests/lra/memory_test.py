"""The out-of-memory warning: sizes that cannot fit are flagged, small ones are not."""

import pytest

from lra import memory
from mra_jax import attentions


def _estimate(attention, length, batch, **kw):
  return memory.activation_bytes(
    micro_batch=batch,
    length=length,
    num_layers=2,
    embed_dim=64,
    qkv_dim=64,
    mlp_dim=128,
    num_heads=2,
    attention=attention,
    knobs=attentions.make_knobs(attention, **kw),
    bytes_per_value=4,
  )


def test_estimate_counts_what_the_backward_pass_keeps():
  # Per token and layer: 6 E + 4 QKV + 3 MLP values; per head 3 float32 scores per key;
  # plus the embeddings (4 E values per token).
  L, B = 4096, 3
  per_token = 6 * 64 + 4 * 64 + 3 * 128
  for attention, keys in (("softmax", L), ("mra2", 32 * 8 + L // 32), ("performer", 256)):
    assert memory.keys_per_query(attention, L, attentions.make_knobs(attention)) == keys
    expected = 2 * B * L * (per_token * 4 + 3 * 2 * keys * 4) + B * L * 64 * 4 * 4
    assert _estimate(attention, L, B) == expected, attention
  small_budget = attentions.make_knobs("mra2", block_size=64, block_per_row=2)
  assert memory.keys_per_query("mra2", L, small_budget) == 128 + 64
  # Refinement capped by length.
  assert memory.keys_per_query("mra2", 128, attentions.make_knobs("mra2")) == 128 + 4


def test_softmax_grows_quadratically_and_mra_linearly():
  soft_small, soft_big = _estimate("softmax", 4096, 1), _estimate("softmax", 16384, 1)
  mra_small, mra_big = _estimate("mra2", 4096, 1), _estimate("mra2", 16384, 1)
  assert soft_big / soft_small > 12
  assert mra_big / mra_small < 8  # Linear high resolution + (L/32)^2 low resolution.
  assert mra_big < soft_big / 10


def test_path_x_softmax_at_paper_batch_warns(monkeypatch):
  messages = []
  monkeypatch.setattr(memory.logging, "warning", lambda msg, *args: messages.append(msg % args))
  gib = 2**30
  estimate = _estimate("softmax", 16384, 256)
  assert memory.warn_if_too_large(estimate, 80 * gib, what="pathfinder128 softmax")
  assert "Out-of-memory risk" in messages[0] and "grad_accum_steps" in messages[0]
  assert not memory.warn_if_too_large(_estimate("mra2", 2048, 32), 80 * gib, what="listops")
  assert not memory.warn_if_too_large(estimate, None, what="unknown device")


@pytest.mark.parametrize("attention", ["performer", "local"])
def test_other_attentions_use_a_bounded_working_set(attention):
  assert _estimate(attention, 65536, 1) / _estimate(attention, 16384, 1) == pytest.approx(
    4.0, rel=0.01
  )
