"""Embedding through features.py: dict inputs, flip test-time augmentation."""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from reidjax.evaluate import features, ranking
from reidjax.layers.dual_attention import DualAttention, SequenceItems
from reidjax.models import interface
from reidjax import sharding
from tests.layers import duatm_reference


class TinyEmbedder(nn.Module):
  kind: ClassVar[str] = interface.EMBEDDING

  def setup(self):
    self.dense = nn.Dense(3)

  def __call__(self, inputs, train=False):
    return {"features": self.embed(inputs)}

  def embed(self, inputs):
    images = inputs["images"]
    return self.dense(images.reshape(images.shape[0], -1))


class CameraEmbedder(nn.Module):
  """Needs a second field: the feature is the image mean plus 10 x camid."""

  kind: ClassVar[str] = interface.EMBEDDING
  input_fields: ClassVar[tuple[str, ...]] = ("images", "camids")

  def __call__(self, inputs, train=False):
    return {"features": self.embed(inputs)}

  def embed(self, inputs):
    mean = jnp.mean(inputs["images"], axis=(1, 2))  # (B, 3)
    return mean + 10.0 * inputs["camids"][:, None].astype(jnp.float32)


class TinyDuATM(nn.Module):
  """A DuATM-shaped pair model: a sequence of per-pixel vectors (row-major)
  with a learned position embedding, so that the mirror's features differ;
  ``prepare`` L2-normalises and runs the real DuATM matcher (Eq. 1-5)."""

  dim: int = 4
  kind: ClassVar[str] = interface.PAIR

  def setup(self):
    self.project = nn.Dense(self.dim)
    self.position = self.param("position", nn.initializers.normal(1.0),
                               (3, 2, self.dim))
    self.matcher = DualAttention(name="matcher")

  def __call__(self, inputs, train=False):
    return self.embed(inputs)

  def features(self, inputs, mirrored=False):
    x = self.project(inputs["images"]) + self.position  # (B, H, W, D)
    if mirrored:  # Back to the unflipped layout: columns reversed.
      x = x[:, :, ::-1]
    return {"sequence": x.reshape(x.shape[0], -1, self.dim)}

  def prepare(self, feats):
    x = feats["sequence"]
    x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    items = self.matcher.prepare(x, train=False)
    return {**items._asdict(), "global": jnp.mean(x, axis=1)}

  def embed(self, inputs):
    return self.prepare(self.features(inputs))

  def pair_distance(self, a, b):
    pick = lambda items: SequenceItems(*(items[f] for f in SequenceItems._fields))
    return self.matcher.pair_distance(pick(a), pick(b))


def test_make_embed_fn_flip_averages_the_mirror():
  model = TinyEmbedder()
  rng = np.random.default_rng(0)
  images = rng.normal(size=(4, 6, 5, 3)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), {"images": jnp.asarray(images)})
  mesh = sharding.make_data_mesh()
  plain = np.asarray(features.make_embed_fn(model, mesh)(variables, {"images": images}))
  flipped = np.asarray(features.make_embed_fn(model, mesh, flip=True)(
      variables, {"images": images}))
  w = np.asarray(variables["params"]["dense"]["kernel"])
  b = np.asarray(variables["params"]["dense"]["bias"])
  def dense(x):
    return x.reshape(4, -1) @ w + b
  np.testing.assert_allclose(plain, dense(images), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      flipped, (dense(images) + dense(images[:, :, ::-1, :])) / 2,
      rtol=1e-5, atol=1e-5)
  with pytest.raises(TypeError, match="dict of input fields"):
    features.make_embed_fn(model, mesh)(variables, images)


def test_flip_for_pair_models_averages_sequences_then_prepares():
  model = TinyDuATM()
  rng = np.random.default_rng(1)
  images = rng.normal(size=(6, 3, 2, 3)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(1), {"images": jnp.asarray(images)})
  mesh = sharding.make_data_mesh()
  items = features.make_embed_fn(model, mesh, flip=True)(variables,
                                                          {"images": images})
  # NumPy: the sequence of the image and of its mirror (columns put back),
  # averaged, then L2-normalised; the DuATM distance of those sequences.
  params = jax.tree.map(lambda x: np.asarray(x, np.float64), variables["params"])
  kernel, bias = params["project"]["kernel"], params["project"]["bias"]
  pos = params["position"]
  plain = images.astype(np.float64) @ kernel + bias + pos
  mirror = (images[:, :, ::-1].astype(np.float64) @ kernel + bias + pos)[:, :, ::-1]
  average = ((plain + mirror) / 2).reshape(6, 6, model.dim)
  average /= np.linalg.norm(average, axis=-1, keepdims=True)
  stats = variables["batch_stats"]["matcher"]["norm"]
  expected = duatm_reference.distance_matrix(
      list(average), list(average), params["matcher"],
      np.asarray(stats["mean"], np.float64), np.asarray(stats["var"], np.float64))
  got = ranking.pairwise_distance_tiled(
      lambda v, a, b: model.apply(v, a, b, method="pair_distance"), items, items,
      params=variables)
  # The mirror's features differ, so flip changes the distances.
  assert np.abs(plain - mirror).max() > 0.1
  off_diagonal = ~np.eye(6, dtype=bool)
  np.testing.assert_allclose(got[off_diagonal], expected[off_diagonal],
                             rtol=1e-4, atol=1e-5)
  assert np.abs(np.diag(got)).max() < 2e-3  # Round-off of the expanded Eq. 4.
  np.testing.assert_allclose(np.asarray(items["global"]), average.mean(1),
                             rtol=1e-5, atol=1e-6)
  # Averaging the prepared items instead is not the distance of any
  # sequence: it differs from the reference.
  plain_items = model.apply(variables, {"images": images}, method="embed")
  mirror_items = model.apply(variables, {"images": images[:, :, ::-1]},
                             method="embed")
  averaged_items = jax.tree.map(lambda a, b: (a + b) / 2, plain_items, mirror_items)
  wrong = np.asarray(model.apply(variables, averaged_items, averaged_items,
                                 method="pair_distance"))
  assert np.abs(wrong - expected)[off_diagonal].max() > 1e-3


def _batches(images, camids, batch_size):
  n = len(images)
  for lo in range(0, n, batch_size):
    idx = np.arange(lo, lo + batch_size)
    valid = idx < n
    take = np.minimum(idx, n - 1)
    # Reversed order inside a batch: rows must be put back by index.
    yield {"images": images[take][::-1], "camids": camids[take][::-1],
           "pids": np.zeros(batch_size, np.int32),
           "mask": valid[::-1], "index": np.where(valid, idx, -1)[::-1].astype(np.int32)}


def test_extract_features_passes_every_declared_field():
  model = CameraEmbedder()
  rng = np.random.default_rng(2)
  images = rng.normal(size=(7, 2, 2, 3)).astype(np.float32)
  camids = rng.integers(0, 5, 7).astype(np.int32)
  mesh = sharding.make_data_mesh()
  embed_fn = features.make_embed_fn(model, mesh)
  got = features.extract_features(embed_fn, {}, _batches(images, camids, 4), 7, mesh,
                                  fields=interface.input_fields(model))
  np.testing.assert_allclose(got, images.mean((1, 2)) + 10.0 * camids[:, None],
                             rtol=1e-6)
  with pytest.raises(KeyError, match="missing \\['camids'\\]"):
    features.extract_features(
        embed_fn, {}, ({k: v for k, v in b.items() if k != "camids"}
                       for b in _batches(images, camids, 4)), 7, mesh,
        fields=interface.input_fields(model))
  with pytest.raises(RuntimeError, match="exactly once"):
    features.extract_features(embed_fn, {}, _batches(images, camids, 4), 8, mesh,
                              fields=interface.input_fields(model))


def test_real_duatm_flip_is_the_distance_of_the_averaged_sequences():
  from reidjax import models  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(dict(
      name="duatm", dtype="float32", dim=8, video=False, matching="full",
      corruption_probability=0.2,
      backbone=dict(name="densenet121", growth_rate=4, block_config=(1, 1, 1, 1),
                    num_init_features=8)))
  model = models.build_model(config, num_classes=3)
  rng = np.random.default_rng(3)
  # Per-item colour offsets and left-right gradients: distinct items whose
  # mirrors differ.
  images = (rng.normal(size=(4, 64, 64, 3)) + 3 * rng.normal(size=(4, 1, 1, 3))
            + 3 * rng.normal(size=(4, 1, 1, 1)) * np.linspace(-1, 1, 64)[:, None]
            ).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), {"images": jnp.asarray(images)})
  mesh = sharding.make_data_mesh()
  items = features.make_embed_fn(model, mesh, flip=True)(variables, {"images": images})
  plain = np.asarray(model.apply(variables, {"images": images}, method="features")
                     ["sequence"], np.float64)
  mirror = np.asarray(model.apply(variables, {"images": images[:, :, ::-1]},
                                  mirrored=True, method="features")["sequence"],
                      np.float64)
  assert plain.shape == (4, 4, 8)  # 2 x 2 map: the columns matter.
  assert np.abs(plain - mirror).max() > 1e-3
  average = (plain + mirror) / 2
  average /= np.linalg.norm(average, axis=-1, keepdims=True)
  stats = variables["batch_stats"]["matcher"]["norm"]
  expected = duatm_reference.distance_matrix(
      list(average), list(average),
      jax.tree.map(lambda x: np.asarray(x, np.float64), variables["params"]["matcher"]),
      np.asarray(stats["mean"], np.float64), np.asarray(stats["var"], np.float64))
  got = ranking.pairwise_distance_tiled(
      lambda v, a, b: model.apply(v, a, b, method="pair_distance"), items, items,
      params=variables)
  off_diagonal = ~np.eye(4, dtype=bool)
  np.testing.assert_allclose(got[off_diagonal], expected[off_diagonal],
                             rtol=1e-4, atol=1e-5)
