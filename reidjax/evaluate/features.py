"""Embedding a dataset split with a model, sharded over the mesh.

The input is an iterator of evaluation batches in dataset order: every input
field the model declares (``reidjax.models.interface.input_fields``, e.g.
``images`` (B, H, W, 3) or clips (B, T, H, W, 3), ``camids`` (B,)), a
``mask`` (B,) that is False on padding rows and the dataset ``index`` (B,) of
each row, as ``reidjax.data.pipeline.eval_batches`` yields them; each process
passes its own slice of every global batch. The output is the (N, D) feature
matrix (pair models: a dict of (N, ...) arrays, the ``embed`` output) in
dataset order, on every process.

Flip test-time augmentation (``flip=True``; standard in the ReID "bag of
tricks" evaluations, e.g. Luo et al., CVPR-W 2019): an item is embedded
together with its horizontal mirror (every field of
``interface.IMAGE_FIELDS`` mirrored, the other fields as they are).

* Embedding models: ``(embed(x) + embed(mirror(x))) / 2``, leaf-wise.
* Pair models (DuATM, CACE-Net): the *features* are averaged, then prepared
  once: ``prepare((features(x) + features(mirror(x), mirrored=True)) / 2)``.
  ``features(..., mirrored=True)`` puts the mirror's features back into the
  unflipped layout (e.g. a spatial sequence's columns reversed), so that the
  average is taken position by position. Averaging the prepared leaves
  instead (filters, refined sequences, Gram matrices) would give an item
  that is not the preparation of any sequence, and a pair distance that is
  not the model's distance of any pair of items.
  Only float leaves are averaged; other leaves (e.g. a bool mask) must be
  equal for an item and its mirror and are taken from the unflipped item.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from reidjax.models import interface
from reidjax import sharding

# Fields of an evaluation batch that are not model inputs.
BOOKKEEPING_FIELDS = ("mask", "index")


def flip_images(images):
  """Horizontal mirror of (..., H, W, C) images (NHWC, or clips NTHWC)."""
  return images[..., ::-1, :]


def mirror_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
  """``inputs`` with every field of ``interface.IMAGE_FIELDS`` mirrored."""
  return {k: flip_images(v) if k in interface.IMAGE_FIELDS else v
          for k, v in inputs.items()}


def _average(a, b):
  """Leaf-wise mean of two pytrees of float leaves; other leaves from ``a``."""
  def one(x, y):
    if jnp.issubdtype(jnp.result_type(x), jnp.floating):
      return (x + y) / 2
    return x
  return jax.tree.map(one, a, b)


def flip_average(embed: Callable[[Any], Any]) -> Callable[[Any], Any]:
  """Wraps ``f(inputs)`` into ``(f(x) + f(mirror(x))) / 2`` (leaf-wise);
  ``inputs`` is a dict of fields, its ``IMAGE_FIELDS`` mirrored."""

  def embed_flip(inputs):
    return _average(embed(inputs), embed(mirror_inputs(inputs)))

  return embed_flip


def embed_inputs(model: nn.Module, variables: Any, inputs: Mapping[str, Any],
                 flip: bool = False) -> Any:
  """The evaluation embedding of ``inputs`` (traceable; see module doc)."""
  if not flip:
    return model.apply(variables, inputs, method="embed")
  if interface.model_kind(model) == interface.PAIR:
    plain = model.apply(variables, inputs, method="features")
    mirror = model.apply(variables, mirror_inputs(inputs), mirrored=True,
                         method="features")
    return model.apply(variables, _average(plain, mirror), method="prepare")
  return flip_average(lambda x: model.apply(variables, x, method="embed"))(
      inputs)


def make_embed_fn(model: nn.Module, mesh: Mesh, flip: bool = False) -> Callable:
  """``(variables, inputs) -> features``, jitted; inputs batch-sharded.

  Args:
    model: an embedding or pair model (``interface.model_kind``).
    mesh: the data mesh.
    flip: flip test-time augmentation (see module doc).

  Returns:
    ``embed_fn(variables, inputs)`` with ``inputs`` a dict of (B, ...)
    fields (B a multiple of the mesh's devices), returning the ``embed``
    output (an array or dict of (B, ...) arrays) replicated on ``mesh``.
  """
  interface.model_kind(model)  # Checks the model's methods up front.

  def embed(variables, inputs):
    if not isinstance(inputs, Mapping):
      raise TypeError(
          f"embed_fn takes a dict of input fields {interface.input_fields(model)}, "
          f"got {type(inputs).__name__}; wrap images as {{'images': images}}.")
    return embed_inputs(model, variables, inputs, flip=flip)

  return jax.jit(embed, in_shardings=(sharding.replicated(mesh),
                                      sharding.batch_sharded(mesh)),
                 out_shardings=sharding.replicated(mesh))


def extract_features(embed_fn: Callable, variables: Any,
                     batches: Iterable[dict[str, np.ndarray]], num_items: int,
                     mesh: Mesh, fields: Iterable[str] = ("images",)) -> Any:
  """Runs ``embed_fn`` over ``batches``; returns features for items 0..num_items-1.

  Args:
    embed_fn: from ``make_embed_fn`` (or any function of (variables, inputs
      dict) returning an array or a dict of arrays with a leading batch
      axis).
    variables: the model's ``{"params", "batch_stats"}``.
    batches: local eval batches with the ``fields``, ``mask`` and ``index``.
    num_items: the split size; every index must arrive exactly once.
    mesh: the data mesh.
    fields: the model's input fields (``interface.input_fields(model)``).

  Returns:
    (num_items, ...) NumPy array(s), same structure as ``embed_fn``'s output.
    Rows are written into arrays allocated once (no concatenated copy): the
    host holds one split's features plus one batch.
  """
  fields = tuple(fields)
  out, seen = None, np.zeros(num_items, np.int64)
  for local in batches:
    missing = [f for f in fields + BOOKKEEPING_FIELDS if f not in local]
    if missing:
      raise KeyError(f"Evaluation batches need the fields {list(fields)} plus "
                     f"{list(BOOKKEEPING_FIELDS)}, but a batch has only "
                     f"{sorted(local)} (missing {missing}).")
    batch = sharding.to_global_batch(
        {k: local[k] for k in fields + BOOKKEEPING_FIELDS}, mesh)
    features = embed_fn(variables, {f: batch[f] for f in fields})
    # mask/index are tiny: gather them to every process with the features.
    mask = np.asarray(multihost_utils.process_allgather(
        batch["mask"], tiled=True)).astype(bool)
    index = np.asarray(multihost_utils.process_allgather(
        batch["index"], tiled=True))[mask]
    if index.size and (index.min() < 0 or index.max() >= num_items):
      raise RuntimeError(
          f"Evaluation batches delivered index {int(index.min())}..."
          f"{int(index.max())} for a split of {num_items} items.")
    if out is None:
      # Aligned: on CPU the evaluation then ranks the gallery in place.
      out = jax.tree.map(lambda f: sharding.host_empty(
          (num_items,) + f.shape[1:], f.dtype), features)
    jax.tree.map(lambda o, f: o.__setitem__(index, np.asarray(f)[mask]),
                 out, features)
    np.add.at(seen, index, 1)
  if out is None or not np.all(seen == 1):
    raise RuntimeError(
        f"Evaluation batches delivered {int(seen.sum())} items with "
        f"{int(np.count_nonzero(seen))} distinct indices for a split of "
        f"{num_items}; every item must be embedded exactly once.")
  return out
