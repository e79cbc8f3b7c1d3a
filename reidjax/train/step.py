"""The jitted, data-parallel train step.

One step: forward in train mode (BatchNorm uses and updates global-batch
statistics), the model's objective, gradients, an optimizer update. The
state is replicated and donated; the batch is sharded on ``data``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
from jax.sharding import Mesh

from reidjax.train import sharding
from reidjax.train.state import TrainState


def make_train_step(objective: Callable, loss_config: ml_collections.ConfigDict,
                    mesh: Mesh, schedule: Callable[[Any], Any] | None = None):
  """Returns ``step(state, batch) -> (state, metrics)``, jitted over ``mesh``.

  Args:
    objective: ``(outputs, batch, loss_config) -> (loss, metrics)``.
    loss_config: the ``loss`` config section.
    mesh: the data-parallel mesh.
    schedule: if given, the learning rate is added to the metrics.
  """

  def step(state: TrainState, batch: dict[str, jax.Array]):
    dropout_key = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      outputs, updates = state.apply_fn(
          {"params": params, "batch_stats": state.batch_stats},
          batch["images"], train=True, mutable=["batch_stats"],
          rngs={"dropout": dropout_key})
      loss, metrics = objective(outputs, batch, loss_config)
      return loss, (metrics, updates)

    grads, (metrics, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
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
