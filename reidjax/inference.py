"""Restore a trained model from a workdir and embed images with it.

  embedder = ReidEmbedder.from_workdir("workdirs/quickstart")
  features = embedder.embed(images)        # (N, H, W, 3) uint8 RGB -> (N, D)
  dist = embedder.distance(query_features, gallery_features)   # (Q, G)
  order = np.argsort(dist, axis=1)         # each query's gallery ranking

Video models take clips, (N, T, H, W, 3). A model that declares more input
fields than ``images`` gets them as keyword arguments of ``embed``, e.g.
``embed(images, camids=camids)``. Pair models (DuATM) return a dict
of per-item arrays from ``embed``; ``distance`` then runs the model's
``pair_distance`` in tiles. The checkpoint carries the run's config, so
nothing but the workdir is needed; it restores onto whatever devices this
process has.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reidjax import imagenet
from reidjax.evaluate import distance, features, ranking
from reidjax.models import build_model, interface
from reidjax.train import checkpoint, sharding
from reidjax.train.state import abstract_variables


def normalize_images(images: np.ndarray, height: int, width: int) -> jax.Array:
  """uint8 RGB (N, h, w, 3) -> ImageNet-normalised float32 (N, height, width, 3).

  Clips (N, T, h, w, 3) are normalised frame by frame. Float inputs are taken
  as already normalised and only resized. Resizing is bilinear (antialiased
  when shrinking), like the training pipeline's.
  """
  images = np.asarray(images)
  if images.ndim == 5 and images.shape[-1] == 3:
    frames = normalize_images(images.reshape((-1,) + images.shape[2:]), height, width)
    return frames.reshape(images.shape[:2] + frames.shape[1:])
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be (N, H, W, 3) RGB or clips (N, T, H, W, 3), got "
                     f"shape {images.shape}.")
  x = jnp.asarray(images, jnp.float32)
  if images.dtype == np.uint8:
    x = (x / 255.0 - jnp.asarray(imagenet.IMAGENET_MEAN)) / jnp.asarray(imagenet.IMAGENET_STD)
  if x.shape[1:3] != (height, width):
    x = jax.image.resize(x, (x.shape[0], height, width, 3), "bilinear")
  return x


class ReidEmbedder:
  """A trained model with its variables, ready to embed images."""

  def __init__(self, model: Any, variables: Any, config: ml_collections.ConfigDict,
               mesh: jax.sharding.Mesh):
    self.model, self.variables, self.config, self.mesh = model, variables, config, mesh
    self.kind = interface.model_kind(model)
    self._embed = features.make_embed_fn(model, mesh)
    self._pair_fn = lambda v, a, b: model.apply(v, a, b, method="pair_distance")

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None, *,
                   model_name: str | None = None) -> "ReidEmbedder":
    """Restores the checkpoint at ``step`` (default: latest) of ``workdir``.

    ``model_name``: the ``model.name`` the caller needs (e.g. a paper's figure);
    a workdir of another model is a ValueError naming both.
    """
    ckpt = checkpoint.Checkpointer(workdir, save_every_steps=1)
    if ckpt.latest_step() is None:
      raise FileNotFoundError(
          f"No checkpoint under {ckpt.directory!r}; train first with "
          f"`python train.py --config ... --workdir {workdir}`.")
    config = ckpt.restore_config(step)
    if model_name is not None and config.model.name != model_name:
      ckpt.close()
      raise ValueError(f"{workdir!r} holds a {config.model.name!r} model; this needs "
                       f"model.name {model_name!r}.")
    mesh = sharding.make_data_mesh()
    model = build_model(config.model, config.model.num_classes)
    variables = ckpt.restore_variables(abstract_variables(model, config.data, mesh), step)
    ckpt.close()
    return cls(model, variables, config, mesh)

  def embed(self, images: np.ndarray, batch_size: int = 64, **fields: np.ndarray) -> Any:
    """Images (N, H, W, 3) or clips (N, T, H, W, 3), uint8 RGB or normalised
    float -> (N, D) features (pair models: a dict of (N, ...) arrays).

    ``fields``: the model's other input fields, (N, ...) each.
    """
    height, width = self.config.data.height, self.config.data.width
    inputs = interface.select_inputs(self.model, {"images": images, **fields})
    for name, value in inputs.items():
      if len(value) != len(images):
        raise ValueError(f"embed: {len(images)} images but {len(value)} {name}.")
    devices = self.mesh.size
    batch_size = -(-batch_size // devices) * devices
    out = []
    for start in range(0, len(images), batch_size):
      chunk = {k: np.asarray(v[start:start + batch_size]) for k, v in inputs.items()}
      chunk["images"] = normalize_images(chunk["images"], height, width)
      n = len(chunk["images"])
      pad = -n % devices  # The batch axis is split over devices.
      chunk = {k: np.asarray(jnp.pad(v, ((0, pad),) + ((0, 0),) * (v.ndim - 1)))
               for k, v in chunk.items()}
      out.append(jax.tree.map(lambda f, n=n: np.asarray(f)[:n],
                              self._embed(self.variables, chunk)))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *out)

  def distance(self, query_features: Any, gallery_features: Any) -> np.ndarray:
    """(Q, G) distances of two ``embed`` outputs, as the run evaluated them.

    Embedding models: the config's ``eval.metric`` (and ``eval.normalize``);
    pair models: the model's ``pair_distance``, tile by tile.
    """
    if self.kind == interface.PAIR:
      return ranking.pairwise_distance_tiled(self._pair_fn, query_features,
                                             gallery_features, mesh=self.mesh,
                                             params=self.variables)
    return np.asarray(distance.pairwise_distance(
        query_features, gallery_features, metric=self.config.eval.metric,
        normalize=self.config.eval.get("normalize", False)))
