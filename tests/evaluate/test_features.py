"""Flip test-time augmentation through features.make_embed_fn."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reidjax.evaluate import features
from reidjax.train import sharding


class TinyEmbedder(nn.Module):
  kind = "embedding"

  def setup(self):
    self.dense = nn.Dense(3)

  def __call__(self, images, train=False):
    return {"features": self.embed(images)}

  def embed(self, images):
    return self.dense(images.reshape(images.shape[0], -1))


def test_make_embed_fn_flip_averages_the_mirror():
  model = TinyEmbedder()
  rng = np.random.default_rng(0)
  images = rng.normal(size=(4, 6, 5, 3)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(images))
  mesh = sharding.make_data_mesh()
  plain = np.asarray(features.make_embed_fn(model, mesh)(variables, images))
  flipped = np.asarray(features.make_embed_fn(model, mesh, flip=True)(
      variables, images))
  w = np.asarray(variables["params"]["dense"]["kernel"])
  b = np.asarray(variables["params"]["dense"]["bias"])
  def dense(x):
    return x.reshape(4, -1) @ w + b
  np.testing.assert_allclose(plain, dense(images), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      flipped, (dense(images) + dense(images[:, :, ::-1, :])) / 2,
      rtol=1e-5, atol=1e-5)
