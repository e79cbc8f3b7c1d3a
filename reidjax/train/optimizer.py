"""Learning-rate schedules and optimizers from the ``optimizer``/``schedule`` config.

Schedule (per step, from epoch-based config): a linear warm-up from
``warmup_factor * lr`` to ``lr`` over ``warmup_epochs`` (the "warm-up" trick
of Bag of Tricks, Eq. 1), then either a multi-step decay (x ``gamma`` at each
epoch in ``milestones``) or a cosine decay to ``final_lr_factor * lr`` at the
end of training.

Optimizers: ``adam`` and ``sgd`` add weight decay to the gradient (L2, as
torch.optim and the papers' code do); ``adamw`` decouples it (Loshchilov &
Hutter).

Frozen backbone phase (``freeze_backbone_epochs``, DuATM Sec. 4.1: the
backbone is fixed for the first 100 epochs): the parameters under the
top-level ``backbone`` scope get zero updates, no weight decay and no
momentum for that many epochs (``optax.transforms.conditionally_mask``
passes the inner state through unchanged), then the same optimizer as the
rest. Their inner schedule is shifted by the frozen steps so that every
parameter follows the one global learning-rate schedule. In that phase the
train step also runs the backbone in inference mode and computes no
gradient through it (``reidjax.train.step``).

Center-loss centres (the ``centers`` scope, ``center_weight > 0``) are
stepped as Bag of Tricks steps them: their own plain SGD
(``losses.center_optimizer``), outside the main optimizer.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
import optax

from reidjax import losses

BACKBONE_SCOPE = "backbone"
# The baseline's center-loss centres (``StrongBaseline`` with center_loss=True).
CENTERS_SCOPE = "centers"


def make_schedule(config: ml_collections.ConfigDict, *, lr: float,
                  steps_per_epoch: int) -> optax.Schedule:
  """The ``schedule`` config section and the peak ``lr`` -> (step -> lr)."""
  total = config.epochs * steps_per_epoch
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  if config.kind == "multistep":
    boundaries = {int(m * steps_per_epoch) - warmup: config.gamma
                  for m in config.milestones}
    if any(b <= 0 for b in boundaries):
      raise ValueError(f"schedule.milestones {tuple(config.milestones)} must lie "
                       f"after the warm-up ({config.warmup_epochs} epochs).")
    decay = optax.piecewise_constant_schedule(lr, boundaries)
  elif config.kind == "cosine":
    decay = optax.cosine_decay_schedule(lr, max(total - warmup, 1),
                                        alpha=config.get("final_lr_factor", 0.0))
  elif config.kind == "constant":
    decay = optax.constant_schedule(lr)
  else:
    raise ValueError(f"schedule.kind must be 'multistep', 'cosine' or "
                     f"'constant', got {config.kind!r}.")
  if warmup == 0:
    return decay
  ramp = optax.linear_schedule(config.warmup_factor * lr, lr, warmup)
  return optax.join_schedules([ramp, decay], [warmup])


def _base_optimizer(config: ml_collections.ConfigDict,
                    schedule: optax.Schedule) -> optax.GradientTransformation:
  wd = config.get("weight_decay", 0.0)
  if config.name == "adam":
    return optax.chain(optax.add_decayed_weights(wd),
                       optax.adam(schedule, b1=config.get("beta1", 0.9),
                                  b2=config.get("beta2", 0.999)))
  if config.name == "adamw":
    return optax.adamw(schedule, b1=config.get("beta1", 0.9),
                       b2=config.get("beta2", 0.999), weight_decay=wd)
  if config.name == "sgd":
    return optax.chain(optax.add_decayed_weights(wd),
                       optax.sgd(schedule, momentum=config.get("momentum", 0.9),
                                 nesterov=config.get("nesterov", False)))
  raise ValueError(f"optimizer.name must be 'adam', 'adamw' or 'sgd', got "
                   f"{config.name!r}.")


def _labels(params: Any, *, freeze: bool, centers: bool) -> dict[str, Any]:
  """Top-level scope -> optimizer label: "backbone" (frozen phase), "centers"
  (the center loss's own update) or "head" (everything else)."""

  def label(key):
    if centers and key == CENTERS_SCOPE:
      return "centers"
    return "backbone" if freeze and key == BACKBONE_SCOPE else "head"

  return {k: jax.tree.map(lambda _, lab=label(k): lab, v) for k, v in params.items()}


def frozen_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Steps of the frozen-backbone phase (``optimizer.freeze_backbone_epochs``)."""
  return int(round(config.get("freeze_backbone_epochs", 0) * steps_per_epoch))


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule, *,
                   steps_per_epoch: int | None = None,
                   center_weight: float = 0.0) -> optax.GradientTransformation:
  """The optimizer of every parameter.

  Args:
    config: the ``optimizer`` section (name, weight_decay, momentum,
      freeze_backbone_epochs, center_lr ...).
    schedule: step -> learning rate.
    steps_per_epoch: needed to freeze the backbone.
    center_weight: the center loss's weight when the model has centres (the
      ``centers`` scope): they get Bag of Tricks' own SGD step
      (``losses.center_optimizer`` with ``optimizer.center_lr``), no weight
      decay, momentum or schedule. 0: no centres.
  """
  transforms = {"head": _base_optimizer(config, schedule)}
  freeze = bool(config.get("freeze_backbone_epochs", 0))
  if freeze:
    if not steps_per_epoch:
      raise ValueError("optimizer.freeze_backbone_epochs needs steps_per_epoch.")
    num_frozen = frozen_steps(config, steps_per_epoch)
    shifted = lambda count: schedule(count + num_frozen)
    transforms["backbone"] = optax.transforms.conditionally_mask(
        _base_optimizer(config, shifted),
        should_transform_fn=lambda count: count >= num_frozen)
  if center_weight:
    transforms["centers"] = losses.center_optimizer(center_weight, config.center_lr)
  if len(transforms) == 1:
    return transforms["head"]
  return optax.multi_transform(
      transforms, functools.partial(_labels, freeze=freeze, centers=bool(center_weight)))
