"""The out-of-memory warning: sizes that cannot fit are flagged, small ones are not."""

import pytest

from lra import memory


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
    knobs=kw,
    bytes_per_value=4,
  )


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


def test_available_bytes_is_positive_on_cpu():
  available = memory.available_bytes()
  assert available is None or available > 2**20


@pytest.mark.parametrize("attention", ["performer", "local"])
def test_other_attentions_use_a_bounded_working_set(attention):
  assert _estimate(attention, 65536, 1) / _estimate(attention, 16384, 1) == pytest.approx(
    4.0, rel=0.01
  )
