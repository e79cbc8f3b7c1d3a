"""The Evaluator on video splits: clips embedded, pooled per tracklet, ranked."""

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from reidjax.evaluate import metrics, runner
from reidjax.models import interface
from reidjax.train import sharding


class MeanColour(nn.Module):
  """Embedding model: a clip's feature is the mean colour of its frames."""

  kind: ClassVar[str] = interface.EMBEDDING

  def __call__(self, x, train=False):
    return self.embed(x)

  def embed(self, x):
    return jnp.mean(x, axis=(1, 2, 3))  # (B, T, H, W, 3) -> (B, 3)


class Pairwise(MeanColour):
  kind: ClassVar[str] = interface.PAIR

  def pair_distance(self, a, b):
    return jnp.sum((a[:, None] - b[None]) ** 2, axis=-1)


class Split:
  def __init__(self, pids, camids):
    self.pids, self.camids = np.asarray(pids), np.asarray(camids)

  def __len__(self):
    return len(self.pids)


class Plan:
  def __init__(self, tracklet):
    self.tracklet = np.asarray(tracklet)
    self.num_clips = len(self.tracklet)


class State:
  params, batch_stats = {}, {}


def _clip_batches(colours, batch_size):
  """Eval batches of constant-colour 2-frame clips, last batch padded."""
  n = len(colours)
  for lo in range(0, n, batch_size):
    idx = np.arange(lo, lo + batch_size)
    valid = idx < n
    images = np.zeros((batch_size, 2, 4, 4, 3), np.float32)
    images[valid] = colours[idx[valid]][:, None, None, None, :]
    yield {"images": images, "mask": valid, "index": np.where(valid, idx, -1).astype(np.int32)}


def _evaluator(model, query, gallery, plans, colours):
  return runner.Evaluator(
      model, sharding.make_data_mesh(), query=query, gallery=gallery,
      make_batches=lambda split, plan: _clip_batches(colours[id(split)], 4),
      test_clips=lambda split: plans[id(split)], metric="euclidean")


def test_clip_features_are_pooled_per_tracklet_then_ranked():
  rng = np.random.default_rng(0)
  query, gallery = Split([1, 2], [0, 0]), Split([1, 2, 2], [1, 1, 1])
  q_plan, g_plan = Plan([0, 0, 0, 1]), Plan([0, 1, 1, 2, 2, 2])
  colours = {id(query): rng.normal(size=(4, 3)).astype(np.float32),
             id(gallery): rng.normal(size=(6, 3)).astype(np.float32)}
  ev = _evaluator(MeanColour(), query, gallery,
                  {id(query): q_plan, id(gallery): g_plan}, colours)
  got = ev.embed({"params": {}}, query)
  c = colours[id(query)]
  np.testing.assert_allclose(got, np.stack([c[:3].mean(0), c[3]]), rtol=1e-6)
  # The whole run: the same as ranking the pooled features by hand.
  result = ev.run(State(), step=1)
  g = colours[id(gallery)]
  g_pooled = np.stack([g[0], g[1:3].mean(0), g[3:].mean(0)])
  dist = ((got[:, None] - g_pooled[None]) ** 2).sum(-1)
  expected = metrics.evaluate_ranking(dist, query.pids, gallery.pids, query.camids,
                                      gallery.camids, max_rank=50)
  assert result["mAP"] == pytest.approx(expected.mAP, abs=1e-6)


def test_pair_models_need_one_clip_per_tracklet():
  query, gallery = Split([1], [0]), Split([1], [1])
  colours = {id(query): np.ones((2, 3), np.float32), id(gallery): np.ones((1, 3), np.float32)}
  ev = _evaluator(Pairwise(), query, gallery,
                  {id(query): Plan([0, 0]), id(gallery): Plan([0])}, colours)
  with pytest.raises(ValueError, match="one clip per tracklet"):
    ev.embed({"params": {}}, query)
  # One clip per tracklet: the clip features are the tracklet features.
  np.testing.assert_allclose(ev.embed({"params": {}}, gallery), np.ones((1, 3)))
