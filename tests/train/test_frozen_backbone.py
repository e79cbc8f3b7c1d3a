"""A frozen backbone runs in inference mode and gets no gradient (issue 10, item 5)."""

import jax
import ml_collections
import numpy as np
import optax
import pytest

from reidjax.models import build_model, get_objective
from reidjax import sharding
from reidjax.train import optimizer, state as state_lib, step as step_lib

_FROZEN_STEPS = 2


def _setup(freeze_backbone_bn="eval"):
  model = build_model(ml_collections.ConfigDict(dict(
      name="baseline", dtype="float32", embed_feature="bn", video=False, center_loss=False,
      backbone=dict(name="resnet50", stage_sizes=(1, 1, 1, 1), width=4, last_stride=1))),
      num_classes=4)
  data = ml_collections.ConfigDict(dict(height=32, width=16, video=False))
  loss = ml_collections.ConfigDict(dict(label_smoothing=0.1, triplet_margin=0.3,
                                        ce_weight=1.0, triplet_weight=1.0))
  opt = ml_collections.ConfigDict(dict(name="sgd", momentum=0.9, weight_decay=5e-4,
                                       freeze_backbone_epochs=_FROZEN_STEPS,
                                       freeze_backbone_bn=freeze_backbone_bn))
  mesh = sharding.make_data_mesh()
  tx = optimizer.make_optimizer(opt, optax.constant_schedule(0.05), steps_per_epoch=1)
  state = state_lib.create_train_state(model, tx, seed=0, data_config=data, mesh=mesh)
  make = lambda **kw: step_lib.make_train_step(get_objective("baseline"), loss, mesh,
                                               model=model, **kw)
  return state, make(freeze_backbone=True, frozen_backbone_bn=freeze_backbone_bn), make()


def _batch(seed):
  rng = np.random.default_rng(seed)
  return {"images": rng.normal(size=(8, 32, 16, 3)).astype(np.float32),
          "pids": np.repeat(np.arange(4), 2).astype(np.int32),
          "camids": np.zeros(8, np.int32)}


def _copy(tree):
  return jax.tree.map(lambda x: np.array(x), tree)


def _changed(before, after):
  return [bool(np.any(a != b)) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))]


def test_frozen_backbone_keeps_its_statistics_bitwise_until_unfrozen():
  state, frozen_step, train_step = _setup()
  params0, stats0 = _copy(state.params), _copy(state.batch_stats)
  for step in range(_FROZEN_STEPS):
    state, _ = frozen_step(state, _batch(step))
  # Backbone: parameters and BatchNorm statistics bitwise unchanged.
  assert not any(_changed(params0["backbone"], state.params["backbone"]))
  assert not any(_changed(stats0["backbone"], state.batch_stats["backbone"]))
  # The head trained: the classifier and the BNNeck statistics moved.
  assert all(_changed(params0["classifier"], state.params["classifier"]))
  assert all(_changed(stats0["bnneck"], state.batch_stats["bnneck"]))

  frozen_params, frozen_stats = _copy(state.params), _copy(state.batch_stats)
  state, _ = train_step(state, _batch(99))
  # Unfrozen: every backbone statistic and parameter moves.
  assert all(_changed(frozen_stats["backbone"], state.batch_stats["backbone"]))
  assert all(_changed(frozen_params["backbone"], state.params["backbone"]))


def test_frozen_step_uses_running_statistics_and_head_gradient_only():
  state, frozen_step, _ = _setup()
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  batch = _batch(0)
  model_apply = state.apply_fn
  objective = get_objective("baseline")
  loss_config = ml_collections.ConfigDict(dict(label_smoothing=0.1, triplet_margin=0.3,
                                               ce_weight=1.0, triplet_weight=1.0))
  key = jax.random.fold_in(state.rng, state.step)

  # Reference: the backbone's maps in inference mode as fixed inputs, the head
  # (BNNeck + classifier) differentiated by hand-built composition.
  def reference_loss(head_params):
    params = {**variables["params"], **head_params}
    with step_lib.backbone_in_inference_mode():
      outputs, _ = model_apply({"params": params, "batch_stats": variables["batch_stats"]},
                               {"images": batch["images"]}, train=True,
                               mutable=["batch_stats"], rngs={"dropout": key})
    return objective(outputs, batch, loss_config)[0]

  head = {k: v for k, v in variables["params"].items() if k != "backbone"}
  want_loss, want_grads = jax.value_and_grad(reference_loss)(head)
  # Pooled features with the backbone in eval mode differ from train mode.
  train_mode_loss = objective(model_apply(variables, {"images": batch["images"]}, train=True,
                                          mutable=["batch_stats"])[0], batch, loss_config)[0]
  assert abs(float(train_mode_loss) - float(want_loss)) > 1e-4

  # SGD momentum 0.9, first step: update = -lr * (g + wd * w) on the head.
  w = np.array(head["classifier"]["kernel"])
  expected = w - 0.05 * (np.array(want_grads["classifier"]["kernel"]) + 5e-4 * w)
  want_loss = float(want_loss)
  new_state, metrics = frozen_step(state, batch)  # donates state
  np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-6)
  np.testing.assert_allclose(new_state.params["classifier"]["kernel"], expected,
                             rtol=1e-5, atol=1e-8)


def test_train_mode_option_updates_frozen_statistics_but_not_weights():
  state, frozen_step, _ = _setup(freeze_backbone_bn="train")
  params0, stats0 = _copy(state.params), _copy(state.batch_stats)
  state, _ = frozen_step(state, _batch(0))
  assert not any(_changed(params0["backbone"], state.params["backbone"]))
  assert all(_changed(stats0["backbone"], state.batch_stats["backbone"]))


def test_unknown_frozen_bn_mode_is_a_clear_error():
  with pytest.raises(ValueError, match="freeze_backbone_bn must be one of"):
    step_lib.make_train_step(get_objective("baseline"), None, sharding.make_data_mesh(),
                             frozen_backbone_bn="frozen")
