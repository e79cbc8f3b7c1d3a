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

A step whose loss, gradient norm or update norm is not finite changes
nothing but the step counter and the state's record of such steps
(``keep_if_finite``); the metrics carry ``grad_norm`` and ``update_norm``
(global L2 norms, ``optax.tree.norm``) and ``nonfinite`` (1.0 when the
update was dropped).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from reidjax.models import interface
from reidjax import sharding
from reidjax.train import accumulate
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


# Metrics that are not checked for finiteness: the learning rate and the flag
# of a dropped update (1.0 on a step whose update was not applied).
NONFINITE_METRIC = "nonfinite"
UNCHECKED_METRICS = ("lr", NONFINITE_METRIC)


def checked_terms(metrics: Mapping[str, Any]) -> list[str]:
  """The metric names whose finiteness is recorded, in bit order (sorted).

  The objective's terms plus ``grad_norm`` and ``update_norm``; bit ``i`` of
  ``TrainState.nonfinite["*_terms"]`` is ``checked_terms(metrics)[i]``. Works
  on the step's own metrics and on the dict the host gets back.
  """
  return sorted(k for k in metrics if k not in UNCHECKED_METRICS)


def nonfinite_terms(bitmask: int, metrics: Mapping[str, Any]) -> list[str]:
  """The names of the bits set in a ``*_terms`` bitmask of the record."""
  return [name for i, name in enumerate(checked_terms(metrics)) if bitmask >> i & 1]


def keep_if_finite(state: TrainState, loss: jax.Array, metrics: Mapping[str, jax.Array],
                   updated: TrainState) -> TrainState:
  """``updated`` with ``step + 1``, or, when the loss, the gradient norm or the
  update norm is not finite, ``state`` with only ``step + 1`` and the
  non-finite record updated: params, optimizer state and BatchNorm statistics
  stay the last good ones. No host sync: the host reads the record when it
  logs or saves (``reidjax.train.guard.NonFiniteWatch``).

  ``optax.apply_if_finite`` guards only the optimizer's input gradients; this
  also covers the loss and the BatchNorm statistics of the forward, and
  records which terms were not finite.
  """
  finite = (jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"])
            & jnp.isfinite(metrics["update_norm"]))
  names = checked_terms(metrics)
  if len(names) > 31:
    raise ValueError(f"{len(names)} metrics to check for finiteness; the record's int32 "
                     "bitmask holds 31. Return fewer metrics from the objective.")
  terms = sum(jnp.where(jnp.isfinite(metrics[name]).all(), 0, 1 << i)
              for i, name in enumerate(names)).astype(jnp.int32)
  step = state.step + 1
  record = state.nonfinite
  first = ~finite & (record["session_first_step"] == 0)
  nonfinite = {
      "count": record["count"] + (~finite).astype(jnp.int32),
      "session_first_step": jnp.where(first, step, record["session_first_step"]),
      "session_first_terms": jnp.where(first, terms, record["session_first_terms"]),
      "last_step": jnp.where(finite, record["last_step"], step),
      "last_terms": jnp.where(finite, record["last_terms"], terms),
  }
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
  return kept.replace(step=step, nonfinite=nonfinite)


def make_train_step(objective: Callable, loss_config: ml_collections.ConfigDict,
                    mesh: Mesh, schedule: Callable[[Any], Any] | None = None, *,
                    model: nn.Module | None = None, freeze_backbone: bool = False,
                    frozen_backbone_bn: str = "eval", grad_accum_steps: int = 1):
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
    grad_accum_steps: ``train.grad_accum_steps``: the forward in that many
      micro-batches, the objective on the whole batch (``accumulate``).
  """
  if frozen_backbone_bn not in FROZEN_BACKBONE_BN:
    raise ValueError(f"optimizer.freeze_backbone_bn must be one of {FROZEN_BACKBONE_BN}, "
                     f"got {frozen_backbone_bn!r}.")
  select = ((lambda batch: interface.select_inputs(model, batch)) if model is not None
            else (lambda batch: {"images": batch["images"]}))

  def forward(state: TrainState, params, batch, dropout_key):
    # grad_accum_steps > 1: the forward in micro-batches, the objective on the
    # whole batch (reidjax.train.accumulate); 1: one plain apply.
    return accumulate.apply_in_micro_batches(
        state.apply_fn, {"params": params, "batch_stats": state.batch_stats}, select(batch),
        steps=grad_accum_steps, rngs={"dropout": dropout_key})

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
    (loss, (metrics, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trained, fixed)
    grads = {**jax.tree.map(jnp.zeros_like, fixed), **grads}
    param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    metrics = {**metrics, "grad_norm": optax.tree.norm(grads),
               "update_norm": optax.tree.norm(param_updates)}
    state = keep_if_finite(
        state, loss, metrics,
        state.replace(params=optax.apply_updates(state.params, param_updates),
                      opt_state=opt_state,
                      batch_stats=updates.get("batch_stats", state.batch_stats)))
    metrics = {**metrics, NONFINITE_METRIC: (state.nonfinite["last_step"]
                                             == state.step).astype(jnp.float32)}
    if schedule is not None:
      metrics = {**metrics, "lr": schedule(state.step - 1)}
    return state, metrics

  return jax.jit(
      step,
      in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
      out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)),
      donate_argnums=(0,))
