"""The schedules against their definitions (PyTorch OneCycleLR, LRA factor products)."""

import numpy as np
import optax
import pytest

from lra import optim


def test_one_cycle_matches_pytorch_linear_one_cycle():
  lr = optim.one_cycle_lr(1e-4, warmup_steps=100, total_steps=1000)
  start, final = 1e-4 / 25, 1e-4 / 25 / 1e4
  np.testing.assert_allclose(float(lr(0)), start, rtol=1e-6)
  np.testing.assert_allclose(float(lr(99)), 1e-4, rtol=1e-6)  # Peak at warmup - 1.
  np.testing.assert_allclose(float(lr(49.5)), (start + 1e-4) / 2, rtol=1e-5)
  np.testing.assert_allclose(float(lr(999)), final, rtol=1e-4)
  np.testing.assert_allclose(float(lr(549)), (1e-4 + final) / 2, rtol=1e-5)
  b1 = optim.one_cycle_b1(100, 1000)
  assert [round(float(b1(s)), 6) for s in (0, 99, 999)] == [0.95, 0.85, 0.95]


def test_lra_schedules():
  rsqrt = optim.rsqrt_lr(0.05, warmup_steps=1000)
  np.testing.assert_allclose(float(rsqrt(1000)), 0.05 / np.sqrt(1000), rtol=1e-6)
  np.testing.assert_allclose(float(rsqrt(500)), 0.5 * 0.05 / np.sqrt(1000), rtol=1e-6)
  np.testing.assert_allclose(float(rsqrt(4000)), 0.05 / 2 / np.sqrt(1000), rtol=1e-6)
  cosine = optim.cosine_lr(1e-3, warmup_steps=100, total_steps=1000)
  np.testing.assert_allclose(float(cosine(100)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(cosine(600)), 0.5e-3, rtol=1e-5)


def _cfg(**kw):
  base = dict(
    schedule="one_cycle",
    warmup_steps=2,
    weight_decay=0.0,
    b1=0.9,
    b2=0.999,
    eps=1e-6,
    cycle_momentum=True,
    grad_clip_norm=1.0,
    learning_rate=1e-3,
    total_steps=10,
  )
  return optim.OptimizerConfig(**{**base, **kw})


def test_optimizer_follows_the_schedule():
  tx, lr = optim.make_optimizer(_cfg())
  params = {"w": np.ones(3, np.float32)}
  state = tx.init(params)
  updates, _ = tx.update({"w": np.full(3, 5.0, np.float32)}, state, params)
  # First Adam step moves each weight by lr(0) (sign of the gradient), clipped or not.
  np.testing.assert_allclose(np.asarray(updates["w"]), -float(lr(0)), rtol=1e-3)
  np.testing.assert_allclose(float(lr(0)), 1e-3 / optim.DIV_FACTOR, rtol=1e-6)
  assert isinstance(tx, optax.GradientTransformation)


@pytest.mark.parametrize(
  "bad,match",
  [
    (dict(warmup_steps=10), "warmup_steps=10, num_train_steps=10"),
    (dict(schedule="step"), "schedule='step'"),
    (dict(schedule="rsqrt"), "cycle_momentum"),
    (dict(b2=1.0), "b2=1.0"),
    (dict(learning_rate=0.0), "learning_rate=0.0"),
    (dict(total_steps=0), "total_steps=0"),
    (dict(grad_clip_norm=-1.0), "grad_clip_norm=-1.0"),
  ],
)
def test_bad_optimizer_config_raises(bad, match):
  with pytest.raises(ValueError, match=match):
    _cfg(**bad)
