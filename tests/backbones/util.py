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


def random_variables(abstract, seed=0):
  """Random values for a tree of ShapeDtypeStructs, drawn with NumPy.

  Avoids ``model.init``: compiling JAX's RNG for every parameter costs
  seconds of CPU, and the values only need to be generic. BN statistics and
  affine terms are random too, so eval-mode BN is not the identity, and
  every kernel is nonzero.
  """
  rng = np.random.RandomState(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":  # He-normal over fan_in keeps activations O(1)
      std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0.0, std, leaf.shape), leaf.dtype)
    if name in ("scale", "var"):
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    return jnp.asarray(rng.normal(0.0, 0.1, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)
