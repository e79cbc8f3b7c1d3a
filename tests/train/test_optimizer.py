"""Learning-rate schedules at hand-computed steps."""

import ml_collections
import numpy as np
import optax
import pytest

from reidjax.train import optimizer


def _schedule(**kw):
  c = ml_collections.ConfigDict(dict(kind="multistep", epochs=10, warmup_epochs=2,
                                     warmup_factor=0.1, milestones=(4, 8), gamma=0.1))
  c.update(kw)
  return optimizer.make_schedule(c, lr=1.0, steps_per_epoch=10)


def test_multistep_with_warmup():
  s = _schedule()
  # Linear from 0.1 at step 0 to 1.0 at step 20 (2 epochs x 10 steps).
  np.testing.assert_allclose([s(0), s(10), s(20)], [0.1, 0.55, 1.0], rtol=1e-6)
  # x0.1 from epoch 4 (step 40) and again from epoch 8 (step 80).
  np.testing.assert_allclose([s(39), s(40), s(79), s(80), s(99)],
                             [1.0, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_cosine_reaches_final_factor():
  s = _schedule(kind="cosine", final_lr_factor=0.0)
  np.testing.assert_allclose(s(20), 1.0, rtol=1e-6)
  np.testing.assert_allclose(s(60), 0.5, rtol=1e-6)  # half way through the decay
  np.testing.assert_allclose(s(100), 0.0, atol=1e-7)


def test_milestone_inside_warmup_is_an_error():
  with pytest.raises(ValueError, match="milestones"):
    _schedule(milestones=(1, 8))


def test_adam_weight_decay_is_l2_on_the_gradient():
  # With L2 coupled into the gradient, Adam's first step is -lr * sign(g + wd*w).
  c = ml_collections.ConfigDict(dict(name="adam", weight_decay=0.5))
  tx = optimizer.make_optimizer(c, 0.1)
  params = {"w": np.array([1.0, -2.0], np.float32)}
  grads = {"w": np.array([-0.25, 0.5], np.float32)}  # g + 0.5 w = [0.25, -0.5]
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], [-0.1, 0.1], rtol=1e-4)
  assert isinstance(tx, optax.GradientTransformation)
