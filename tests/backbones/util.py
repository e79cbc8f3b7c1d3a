"""Helpers shared by the backbone tests."""

import jax
import jax.numpy as jnp
import numpy as np


def abstract_init(model, shape=(1, 256, 128, 3)):
  """Variables of ``model`` as ShapeDtypeStructs (no compute)."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def num_entries(tree) -> int:
  """Total number of scalars in a pytree of arrays."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
