"""The train state: step, params, BatchNorm statistics, optimizer state, RNG."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh

from reidjax.backbones import torchvision_import
from reidjax.train import sharding


class TrainState(train_state.TrainState):
  """``flax.training.train_state.TrainState`` plus BatchNorm stats and an RNG key.

  ``rng`` is a raw uint32 key (not a typed key) so that it checkpoints as a
  plain array; each step folds the step number into it.
  """

  batch_stats: Any
  rng: jax.Array


def model_input_shape(data_config: Any) -> tuple[int, ...]:
  """The ``data`` config section -> (H, W, 3), or (T, H, W, 3) for video clips."""
  frame = (data_config.height, data_config.width, 3)
  if data_config.get("video", False):
    return (data_config.clip_length,) + frame
  return frame


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, seed: int,
             input_shape: tuple[int, ...]):
  """A zero-argument function that builds the initial ``TrainState``."""

  def init() -> TrainState:
    init_key, step_key = jax.random.split(jax.random.PRNGKey(seed))
    dummy = jnp.zeros((1, *input_shape), jnp.float32)
    variables = model.init({"params": init_key, "dropout": init_key}, dummy,
                           train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             batch_stats=variables.get("batch_stats", {}),
                             tx=tx, rng=step_key)

  return init


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, *,
                       seed: int, input_shape: tuple[int, ...], mesh: Mesh,
                       backbone_config: Any = None) -> TrainState:
  """Initialises a ``TrainState`` replicated over ``mesh``.

  Args:
    model: the Flax module.
    tx: the optimizer.
    seed: initialisation seed (also seeds the per-step RNG).
    input_shape: (H, W, C) of one input image (or (T, H, W, C) for clips).
    mesh: the device mesh.
    backbone_config: the ``model.backbone`` section; when its ``pretrained``
      names a torchvision ``.pth`` / converted ``.npz`` file, the backbone
      (submodule ``backbone``) starts from those weights.
  """
  replicated = sharding.replicated(mesh)
  state = jax.jit(_init_fn(model, tx, seed, input_shape), out_shardings=replicated)()
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
                         input_shape: tuple[int, ...], mesh: Mesh) -> TrainState:
  """Shapes, dtypes and (replicated) shardings of the state, without compute.

  The restore target of a checkpoint: a checkpoint written on any number of
  devices restores onto this mesh.
  """
  shapes = jax.eval_shape(_init_fn(model, tx, 0, input_shape))
  replicated = sharding.replicated(mesh)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      shapes)
