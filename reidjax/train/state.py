"""The train state: step, params, BatchNorm statistics, optimizer state, RNG, and a
record of the steps whose update was dropped because it was not finite."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh

from reidjax.backbones import torchvision_import
from reidjax.models import registry
from reidjax.models.variables import abstract_variables, init_variables, replicated_structs
from reidjax import checkpoint, sharding


# The record of non-finite steps kept in the state (``TrainState.nonfinite``):
# how many steps had a non-finite loss, gradient or update (their updates were
# dropped), and the first one since this process started (``session_first_*``)
# and the latest one: their step and a bitmask of the non-finite terms
# (``reidjax.train.step.checked_terms`` names the bits).
NONFINITE_FIELDS = ("count", "session_first_step", "session_first_terms", "last_step",
                    "last_terms")


def nonfinite_record(count: int | jax.Array = 0) -> dict[str, jax.Array]:
  """A record with ``count`` non-finite steps so far and none in this session."""
  return {name: jnp.asarray(count if name == "count" else 0, jnp.int32)
          for name in NONFINITE_FIELDS}


class TrainState(train_state.TrainState):
  """``flax.training.train_state.TrainState`` plus BatchNorm stats, an RNG key
  and the record of non-finite steps.

  ``rng`` is a raw uint32 key (not a typed key) so that it checkpoints as a
  plain array; each step folds the step number into it. ``nonfinite``: see
  ``nonfinite_record``; steps with a non-finite loss or gradient leave params,
  optimizer state and BatchNorm statistics unchanged (``reidjax.train.step``)
  and are counted here, so the host checks them only when it syncs anyway
  (``reidjax.train.guard.NonFiniteWatch``).
  """

  batch_stats: Any
  rng: jax.Array
  nonfinite: dict[str, jax.Array]


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, seed: int,
             data_config: Any):
  """A zero-argument function that builds the initial ``TrainState``."""

  def init() -> TrainState:
    init_key, step_key = jax.random.split(jax.random.PRNGKey(seed))
    variables = init_variables(model, init_key, data_config)
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             batch_stats=variables["batch_stats"],
                             tx=tx, rng=step_key, nonfinite=nonfinite_record())

  return init


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, *,
                       seed: int, data_config: Any, mesh: Mesh,
                       backbone_config: Any = None) -> TrainState:
  """Initialises a ``TrainState`` replicated over ``mesh``.

  Args:
    model: the Flax module.
    tx: the optimizer.
    seed: initialisation seed (also seeds the per-step RNG).
    data_config: the ``data`` section: the shapes of the model's input fields
      (``interface.input_specs``).
    mesh: the device mesh.
    backbone_config: the ``model.backbone`` section; when its ``pretrained``
      names a torchvision ``.pth`` / converted ``.npz`` file, the backbone
      (submodule ``backbone``) starts from those weights.
  """
  replicated = sharding.replicated(mesh)
  state = jax.jit(_init_fn(model, tx, seed, data_config), out_shardings=replicated)()
  if backbone_config is not None and backbone_config.get("pretrained", ""):
    variables = torchvision_import.apply_pretrained(
        {"params": state.params, "batch_stats": state.batch_stats},
        backbone_config, backbone_scope="backbone")
    # The optimizer state must describe the new parameters.
    state = state.replace(
        params=variables["params"], batch_stats=variables["batch_stats"],
        opt_state=jax.jit(tx.init, out_shardings=replicated)(variables["params"]))
  return state


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation, *,
                         data_config: Any, mesh: Mesh) -> TrainState:
  """Shapes, dtypes and (replicated) shardings of the state, without compute.

  The restore target of a checkpoint: a checkpoint written on any number of
  devices restores onto this mesh.
  """
  return replicated_structs(jax.eval_shape(_init_fn(model, tx, 0, data_config)), mesh)


def start_from_run(state: TrainState, tx: optax.GradientTransformation, workdir: str,
                   mesh: Mesh, transfer: Callable[[Any, Any], dict[str, Any]]) -> TrainState:
  """``state`` with the variables of the latest checkpoint of another run.

  ``model.pretrained`` for networks without ImageNet weights (Attention-Driven
  ReID): the run in ``workdir`` is restored with its own config (any number
  of identities), and ``transfer(fresh_variables, restored_variables)`` (the
  model's ``ModelEntry.transfer_pretrained``) says what is copied. The
  optimizer starts afresh.
  """
  ckpt = checkpoint.Checkpointer(workdir, save_every_steps=1)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f"model.pretrained = {workdir!r} holds no checkpoint: name "
                            "the workdir of a finished reidjax run of the same network.")
  source_config = ckpt.restore_config()
  source_model = registry.build_model(source_config.model, source_config.model.num_classes)
  restored = ckpt.restore_variables(abstract_variables(source_model, source_config.data, mesh))
  ckpt.close()
  variables = transfer({"params": state.params, "batch_stats": state.batch_stats}, restored)
  return state.replace(
      params=variables["params"], batch_stats=variables["batch_stats"],
      opt_state=jax.jit(tx.init, out_shardings=sharding.replicated(mesh))(variables["params"]))

