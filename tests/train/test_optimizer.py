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


def _sgd_by_hand(params, grads, lrs, momentum=0.9, wd=0.1):
  """torch-style SGD with L2 weight decay and momentum, in NumPy."""
  w, trace = np.float64(params), 0.0
  for g, lr in zip(grads, lrs):
    trace = momentum * trace + (g + wd * w)
    w = w - lr * trace
  return w


def test_frozen_backbone_phase_then_the_global_schedule():
  c = ml_collections.ConfigDict(dict(name="sgd", momentum=0.9, weight_decay=0.1,
                                     freeze_backbone_epochs=1))
  sched = optax.piecewise_constant_schedule(1.0, {4: 0.1})  # x0.1 from step 4
  tx = optimizer.make_optimizer(c, sched, steps_per_epoch=2)  # frozen: steps 0, 1
  params = {"backbone": {"w": np.float32(1.0)}, "head": {"w": np.float32(2.0)}}
  state = tx.init(params)
  grads = [0.5, -0.25, 1.0, 0.75, -0.5, 0.25]
  for g in grads:
    updates, state = tx.update({"backbone": {"w": np.float32(g)}, "head": {"w": np.float32(g)}},
                               state, params)
    params = optax.apply_updates(params, updates)
  lrs = [sched(s) for s in range(6)]
  # The head trains from step 0; the backbone from step 2 with the same
  # global learning rates (1, 1 then 0.1 from step 4), no momentum or decay
  # accumulated while frozen.
  np.testing.assert_allclose(params["head"]["w"], _sgd_by_hand(2.0, grads, lrs), rtol=1e-5)
  np.testing.assert_allclose(params["backbone"]["w"],
                             _sgd_by_hand(1.0, grads[2:], lrs[2:]), rtol=1e-5)


def test_freezing_needs_steps_per_epoch():
  c = ml_collections.ConfigDict(dict(name="sgd", freeze_backbone_epochs=1))
  with pytest.raises(ValueError, match="steps_per_epoch"):
    optimizer.make_optimizer(c, 0.1)


def test_center_loss_centres_get_their_own_sgd_step():
  config = ml_collections.ConfigDict(dict(name="adam", weight_decay=5e-4, center_lr=0.5))
  tx = optimizer.make_optimizer(config, optax.constant_schedule(1e-3), center_weight=5e-4)
  params = {"classifier": {"kernel": np.ones((2, 3), np.float32)},
            "centers": {"centers": np.full((3, 2), 2.0, np.float32)}}
  grads = {"classifier": {"kernel": np.full((2, 3), 0.1, np.float32)},
           "centers": {"centers": np.full((3, 2), 1e-4, np.float32)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  # Centres: c <- c - (0.5 / 5e-4) g, no weight decay, no Adam normalisation.
  np.testing.assert_allclose(updates["centers"]["centers"], -(0.5 / 5e-4) * 1e-4, rtol=1e-6)
  # Everything else: Adam's first step, -lr * sign(g + wd * w).
  np.testing.assert_allclose(updates["classifier"]["kernel"], -1e-3, rtol=1e-4)
