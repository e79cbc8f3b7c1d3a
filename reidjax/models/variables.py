"""A model's variables for the inputs a ``data`` config section describes.

``init_variables`` builds them (initialisation), ``abstract_variables`` gives
their shapes and dtypes with replicated shardings on a mesh, without compute:
the restore target of a checkpoint's variables for evaluation, search and
export, on any number of devices. Shared by training (``reidjax.train.state``)
and inference, which must not import each other.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from reidjax import sharding
from reidjax.models import interface


def init_variables(model: nn.Module, key: jax.Array, data_config: Any) -> dict[str, Any]:
  """``{"params", "batch_stats"}`` of ``model`` for the inputs the ``data``
  section describes (one example item of every declared input field)."""
  inputs = jax.tree.map(jnp.asarray, interface.example_inputs(model, data_config))
  variables = model.init({"params": key, "dropout": key}, inputs, train=False)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def replicated_structs(shapes: Any, mesh: Mesh) -> Any:
  """``ShapeDtypeStruct``s of ``shapes``, replicated over ``mesh``."""
  replicated = sharding.replicated(mesh)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes)


def abstract_variables(model: nn.Module, data_config: Any, mesh: Mesh) -> dict[str, Any]:
  """Shapes, dtypes and replicated shardings of ``init_variables``, no compute."""
  shapes = jax.eval_shape(
      lambda: init_variables(model, jax.random.PRNGKey(0), data_config))
  return replicated_structs(shapes, mesh)
