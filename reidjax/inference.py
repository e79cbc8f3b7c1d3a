"""Restore a trained model from a workdir and embed images with it.

  embedder = ReidEmbedder.from_workdir("workdirs/quickstart")
  features = embedder.embed(images)        # (N, H, W, 3) uint8 RGB -> (N, D)

The checkpoint carries the run's config, so nothing but the workdir is
needed; it restores onto whatever devices this process has.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reidjax import imagenet
from reidjax.evaluate import features
from reidjax.models import build_model
from reidjax.train import checkpoint, sharding


def normalize_images(images: np.ndarray, height: int, width: int) -> jax.Array:
  """uint8 RGB (N, h, w, 3) -> ImageNet-normalised float32 (N, height, width, 3).

  Float inputs are taken as already normalised and only resized. Resizing is
  bilinear (antialiased when shrinking), like the training pipeline's.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be (N, H, W, 3) RGB, got shape {images.shape}.")
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
    self._embed = features.make_embed_fn(model, mesh)

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None) -> "ReidEmbedder":
    """Restores the checkpoint at ``step`` (default: latest) of ``workdir``."""
    ckpt = checkpoint.Checkpointer(workdir, save_every_steps=1)
    if ckpt.latest_step() is None:
      raise FileNotFoundError(
          f"No checkpoint under {ckpt.directory!r}; train first with "
          f"`python train.py --config ... --workdir {workdir}`.")
    config = ckpt.restore_config(step)
    mesh = sharding.make_data_mesh()
    model = build_model(config.model, config.model.num_classes)
    dummy = jnp.zeros((1, config.data.height, config.data.width, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy))
    replicated = sharding.replicated(mesh)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})})
    variables = ckpt.restore_variables(abstract, step)
    ckpt.close()
    return cls(model, variables, config, mesh)

  def embed(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB (or normalised float) images -> (N, D) features."""
    height, width = self.config.data.height, self.config.data.width
    devices = self.mesh.size
    batch_size = -(-batch_size // devices) * devices
    out = []
    for start in range(0, len(images), batch_size):
      chunk = normalize_images(images[start:start + batch_size], height, width)
      n = chunk.shape[0]
      pad = -n % devices  # The batch axis is split over devices.
      chunk = jnp.pad(chunk, ((0, pad), (0, 0), (0, 0), (0, 0)))
      out.append(np.asarray(self._embed(self.variables, np.asarray(chunk)))[:n])
    return np.concatenate(out)
