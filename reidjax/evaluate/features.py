"""Embedding a dataset split with a model, sharded over the mesh.

The input is an iterator of evaluation batches in dataset order (images,
a ``mask`` that is False on padding rows and the dataset ``index`` of each
row), as ``reidjax.data.pipeline.eval_batches`` yields them; each process
passes its own slice of every global batch. The output is the (N, D)
feature matrix in dataset order, on every process.

Flip test-time augmentation (``flip=True``; standard in the ReID "bag of
tricks" evaluations, e.g. Luo et al., CVPR-W 2019): the feature of an image is
the average of the features of the image and its horizontal mirror. It
averages every output leaf, which is right for global vectors and per-frame
sequences but mixes positions of spatial feature maps.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from reidjax.train import sharding


def flip_images(images):
  """Horizontal mirror of (..., H, W, C) images (NHWC, or clips NTHWC)."""
  return images[..., ::-1, :]


def flip_average(embed: Callable[[Any], Any]) -> Callable[[Any], Any]:
  """Wraps ``f(images)`` into ``(f(x) + f(flip(x))) / 2`` (leaf-wise)."""

  def embed_flip(images):
    return jax.tree.map(lambda a, b: (a + b) / 2, embed(images),
                        embed(flip_images(images)))

  return embed_flip


def make_embed_fn(model: nn.Module, mesh: Mesh, flip: bool = False) -> Callable:
  """``(variables, images) -> features``, jitted; features replicated on ``mesh``.

  ``flip=True`` averages with the features of the mirrored images.
  """

  def embed(variables, images):
    fn = lambda x: model.apply(variables, x, method="embed")
    return (flip_average(fn) if flip else fn)(images)

  return jax.jit(embed, in_shardings=(sharding.replicated(mesh),
                                      sharding.batch_sharded(mesh)),
                 out_shardings=sharding.replicated(mesh))


def extract_features(embed_fn: Callable, variables: Any,
                     batches: Iterable[dict[str, np.ndarray]], num_items: int,
                     mesh: Mesh) -> Any:
  """Runs ``embed_fn`` over ``batches``; returns features for items 0..num_items-1.

  Args:
    embed_fn: from ``make_embed_fn`` (or any function of (variables, images)
      returning an array or a dict of arrays with a leading batch axis).
    variables: the model's ``{"params", "batch_stats"}``.
    batches: local eval batches with ``images``, ``mask`` and ``index``.
    num_items: the split size; every index must arrive exactly once.
    mesh: the data mesh.

  Returns:
    (num_items, ...) NumPy array(s), same structure as ``embed_fn``'s output.
  """
  chunks, indices = [], []
  for local in batches:
    batch = sharding.to_global_batch(
        {k: local[k] for k in ("images", "mask", "index")}, mesh)
    features = embed_fn(variables, batch["images"])
    # mask/index are tiny: gather them to every process with the features.
    mask = np.asarray(multihost_utils.process_allgather(
        batch["mask"], tiled=True))
    index = np.asarray(multihost_utils.process_allgather(
        batch["index"], tiled=True))
    chunks.append(jax.tree.map(lambda f: np.asarray(f)[mask], features))
    indices.append(index[mask])
  index = np.concatenate(indices)
  if index.size != num_items or not np.array_equal(np.sort(index), np.arange(num_items)):
    raise RuntimeError(
        f"Evaluation batches delivered {index.size} items with "
        f"{np.unique(index).size} distinct indices for a split of {num_items}; "
        "every item must be embedded exactly once.")
  order = np.argsort(index)
  return jax.tree.map(lambda *parts: np.concatenate(parts)[order], *chunks)
