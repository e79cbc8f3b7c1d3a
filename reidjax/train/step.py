"""The jitted, data-parallel train step.

One step: forward in train mode (BatchNorm uses and updates global-batch
statistics), the model's objective, gradients, an optimizer update. The
model gets ``interface.select_inputs(model, batch)``, the dict of the input
fields it declares; the objective gets the whole batch (labels included).
The state is replicated and donated; the batch is sharded on ``data``.

A frozen backbone (DuATM Sec. 4.1: fixed for the first 100 epochs;
``freeze_backbone=True``) is run the way a fixed feature extractor is: in
inference mode, so its BatchNorm normalises with the running statistics and
leaves them bitwise unchanged (``frozen_backbone_bn="train"``: batch
statistics, updated, as a training-mode module would), and with no
gradient computed through it: only the parameters outside the ``backbone``
scope are differentiated, so the backward pass stops at the backbone's
output. The backbone's gradient is a zero tree (the optimizer masks the
backbone in that phase anyway).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from reidjax.models import interface
from reidjax import sharding
from reidjax.train.optimizer import BACKBONE_SCOPE
from reidjax.train.state import TrainState

FROZEN_BACKBONE_BN = ("eval", "train")


def backbone_in_inference_mode():
  """A ``flax.linen.intercept_methods`` context that runs every method call on
  the top-level ``backbone`` submodule with ``train=False``.

  Models call their backbone with a ``train`` argument (``__call__``, or
  its stem and stages one by one); this switches it off from the outside,
  so no model has to know about the frozen phase.
  """

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if module.scope is None or tuple(module.scope.path) != (BACKBONE_SCOPE,):
      return next_fun(*args, **kwargs)
    method = getattr(type(module), context.method_name)
    bound = inspect.signature(method).bind(module, *args, **kwargs)
    if "train" not in bound.arguments and "train" not in inspect.signature(method).parameters:
      return next_fun(*args, **kwargs)
    bound.arguments["train"] = False
    return next_fun(*bound.args[1:], **bound.kwargs)

  return nn.intercept_methods(interceptor)


def make_train_step(objective: Callable, loss_config: ml_collections.ConfigDict,
                    mesh: Mesh, schedule: Callable[[Any], Any] | None = None, *,
                    model: nn.Module | None = None, freeze_backbone: bool = False,
                    frozen_backbone_bn: str = "eval"):
  """Returns ``step(state, batch) -> (state, metrics)``, jitted over ``mesh``.

  Args:
    objective: ``(outputs, batch, loss_config) -> (loss, metrics)``.
    loss_config: the ``loss`` config section.
    mesh: the data-parallel mesh.
    schedule: if given, the learning rate is added to the metrics.
    model: the module, for its declared input fields; None: ``images`` only.
    freeze_backbone: no gradient through the ``backbone`` scope (see the
      module docstring).
    frozen_backbone_bn: ``"eval"`` (running statistics, kept) or ``"train"``
      (batch statistics, updated) for the frozen backbone's BatchNorm.
  """
  if frozen_backbone_bn not in FROZEN_BACKBONE_BN:
    raise ValueError(f"optimizer.freeze_backbone_bn must be one of {FROZEN_BACKBONE_BN}, "
                     f"got {frozen_backbone_bn!r}.")
  select = ((lambda batch: interface.select_inputs(model, batch)) if model is not None
            else (lambda batch: {"images": batch["images"]}))

  def forward(state: TrainState, params, batch, dropout_key):
    return state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, select(batch),
        train=True, mutable=["batch_stats"], rngs={"dropout": dropout_key})

  def step(state: TrainState, batch: dict[str, jax.Array]):
    dropout_key = jax.random.fold_in(state.rng, state.step)

    def loss_fn(trained, fixed):
      if freeze_backbone and frozen_backbone_bn == "eval":
        with backbone_in_inference_mode():
          outputs, updates = forward(state, {**trained, **fixed}, batch, dropout_key)
      else:
        outputs, updates = forward(state, {**trained, **fixed}, batch, dropout_key)
      loss, metrics = objective(outputs, batch, loss_config)
      return loss, (metrics, updates)

    if freeze_backbone:
      fixed = {BACKBONE_SCOPE: state.params[BACKBONE_SCOPE]}
      trained = {k: v for k, v in state.params.items() if k != BACKBONE_SCOPE}
    else:
      fixed, trained = {}, state.params
    grads, (metrics, updates) = jax.grad(loss_fn, has_aux=True)(trained, fixed)
    grads = {**jax.tree.map(jnp.zeros_like, fixed), **grads}
    state = state.apply_gradients(
        grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    if schedule is not None:
      metrics = {**metrics, "lr": schedule(state.step - 1)}
    return state, metrics

  return jax.jit(
      step,
      in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
      out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)),
      donate_argnums=(0,))
