"""The Evaluator: built from the eval config; video splits (clips embedded,
pooled per tracklet, ranked); pair models (full and two-stage ranking)."""

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from reidjax.evaluate import metrics, numpy_reference, runner
from reidjax.models import interface
from reidjax import sharding


class MeanColour(nn.Module):
  """Embedding model: a clip's feature is the mean colour of its frames."""

  kind: ClassVar[str] = interface.EMBEDDING

  def __call__(self, inputs, train=False):
    return self.embed(inputs)

  def embed(self, inputs):
    return jnp.mean(inputs["images"], axis=(1, 2, 3))  # (B, T, H, W, 3) -> (B, 3)


class Pairwise(MeanColour):
  """Pair model: items {"colour": (B, 3), "global": (B, 3)}; the pair
  distance is the squared distance of the colours."""

  kind: ClassVar[str] = interface.PAIR

  def features(self, inputs, mirrored=False):
    del mirrored  # A mean colour is the same for the mirror.
    return {"colour": MeanColour.embed(self, inputs)}

  def prepare(self, feats):
    return {"colour": feats["colour"], "global": feats["colour"]}

  def embed(self, inputs):
    return self.prepare(self.features(inputs))

  def pair_distance(self, a, b):
    return jnp.sum((a["colour"][:, None] - b["colour"][None]) ** 2, axis=-1)


class ScaledPairwise(Pairwise):
  """Pair distance different from the first stage: L1 of the colours."""

  def pair_distance(self, a, b):
    return jnp.sum(jnp.abs(a["colour"][:, None] - b["colour"][None]), axis=-1)


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
  return runner.Evaluator.from_config(
      {"metric": "euclidean"}, model, sharding.make_data_mesh(), query=query,
      gallery=gallery,
      make_batches=lambda split, plan: _clip_batches(colours[id(split)], 4),
      test_clips=lambda split: plans[id(split)])


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
  np.testing.assert_allclose(ev.embed({"params": {}}, gallery)["colour"], np.ones((1, 3)))


def _image_batches(colours, batch_size):
  """Eval batches of constant-colour 2 x 2 images, last batch padded."""
  n = len(colours)
  for lo in range(0, n, batch_size):
    idx = np.arange(lo, lo + batch_size)
    valid = idx < n
    images = np.zeros((batch_size, 1, 2, 2, 3), np.float32)
    images[valid] = colours[idx[valid]][:, None, None, None, :]
    yield {"images": images, "camids": np.zeros(batch_size, np.int32), "mask": valid,
           "index": np.where(valid, idx, -1).astype(np.int32)}


def _image_problem(seed, num_q=20, num_g=50):
  rng = np.random.default_rng(seed)
  query = Split(rng.integers(0, 6, num_q), rng.integers(0, 3, num_q))
  gallery = Split(rng.integers(0, 6, num_g), rng.integers(0, 3, num_g))
  # Small integers: exact distances (with ties) on every path.
  colours = {id(query): rng.integers(-3, 4, (num_q, 3)).astype(np.float32),
             id(gallery): rng.integers(-3, 4, (num_g, 3)).astype(np.float32)}
  return query, gallery, colours


def _from_config(eval_config, model, query, gallery, colours, seed=0):
  return runner.Evaluator.from_config(
      eval_config, model, sharding.make_data_mesh(), query=query, gallery=gallery,
      make_batches=lambda split: _image_batches(colours[id(split)], 4), seed=seed)


def test_from_config_rejects_unknown_keys_and_values():
  query, gallery, colours = _image_problem(0)
  with pytest.raises(ValueError, match=r"\['rerank_topk'\].*accepted keys.*"
                     "rerank_combine.*rerank_top_k"):
    _from_config({"rerank_topk": 5}, Pairwise(), query, gallery, colours)
  with pytest.raises(ValueError, match="eval.rerank_combine must be one of "
                     r"\('replace', 'sum'\), got 'add'"):
    _from_config({"rerank_combine": "add"}, Pairwise(), query, gallery, colours)
  with pytest.raises(ValueError, match="eval.metric must be one of"):
    _from_config({"metric": "l2"}, MeanColour(), query, gallery, colours)
  # The shipped eval section sets exactly the Evaluator's options (ConfigDict).
  from configs import common  # pylint: disable=g-import-not-at-top
  config = common.eval_config("market1501")
  assert sorted(config) == sorted(runner.EVAL_KEYS)
  ev = _from_config(config, Pairwise(), query, gallery, colours)
  assert (ev.metric, ev.max_rank, ev.rerank_top_k, ev.rerank_combine) == (
      "cosine", 50, None, "replace")


def test_from_config_embedding_model_cuhk03():
  query, gallery, colours = _image_problem(1)
  ev = _from_config({"metric": "euclidean", "protocol": "cuhk03", "num_repeats": 3,
                     "max_rank": 10}, MeanColour(), query, gallery, colours, seed=4)
  result = ev.run(State(), step=2)
  q, g = colours[id(query)], colours[id(gallery)]
  dist = ((q[:, None] - g[None]) ** 2).sum(-1)
  expected = numpy_reference.evaluate_cuhk03_loop(
      dist, query.pids, gallery.pids, query.camids, gallery.camids, max_rank=10,
      num_repeats=3, seed=4)
  assert result["mAP"] == pytest.approx(expected.mAP, abs=1e-9)
  np.testing.assert_allclose(result["cmc"], expected.cmc, atol=1e-9)
  assert result["protocol"] == "cuhk03" and result["step"] == 2


@pytest.mark.parametrize("combine", ["replace", "sum"])
def test_from_config_two_stage_pair_model(combine):
  query, gallery, colours = _image_problem(2)
  config = {"metric": "euclidean", "rerank_top_k": 7, "rerank_combine": combine,
            "max_rank": 10}
  result = _from_config(config, ScaledPairwise(), query, gallery, colours).run(
      State(), step=3)
  q, g = colours[id(query)], colours[id(gallery)]
  d1 = ((q[:, None] - g[None]) ** 2).sum(-1)  # the "global" first stage
  d2 = np.abs(q[:, None] - g[None]).sum(-1)
  positions = np.empty(d1.shape)
  for row in range(len(q)):
    order = np.argsort(d1[row], kind="stable")
    top, rest = order[:7], order[7:]
    score = d2[row, top] + (d1[row, top] if combine == "sum" else 0)
    top = top[np.lexsort((top, score))]
    positions[row, np.concatenate([top, rest])] = np.arange(len(g))
  expected = numpy_reference.evaluate_ranking_loop(
      positions, query.pids, gallery.pids, query.camids, gallery.camids, max_rank=10)
  assert result["mAP"] == pytest.approx(expected.mAP, abs=1e-9)
  assert result["mINP"] == pytest.approx(expected.mINP, abs=1e-9)
  np.testing.assert_allclose(result["cmc"], expected.cmc, atol=1e-9)
  # Full pairwise ranking (rerank_top_k = 0) of the same model differs.
  full = _from_config(dict(config, rerank_top_k=0), ScaledPairwise(), query, gallery,
                      colours).run(State(), step=3)
  expected_full = numpy_reference.evaluate_ranking_loop(
      d2, query.pids, gallery.pids, query.camids, gallery.camids, max_rank=10)
  assert full["mAP"] == pytest.approx(expected_full.mAP, abs=1e-9)
  assert abs(full["mAP"] - result["mAP"]) > 1e-6  # (the ranks differ)


def test_from_config_rerank_expansion_verification():
  """eval.rerank: the dense and the sparse path give the metrics of the
  dense re-ranked matrix; QE and verification add to the same run."""
  from reidjax.evaluate import distance, expansion, rerank, verification  # pylint: disable=g-import-not-at-top
  query, gallery, colours = _image_problem(5)
  q, g = colours[id(query)], colours[id(gallery)]
  labels = (query.pids, gallery.pids, query.camids, gallery.camids)
  config = {"metric": "euclidean", "rerank": True, "rerank_k1": 8,
            "rerank_k2": 3, "rerank_lambda": 0.4, "max_rank": 10}
  want = metrics.evaluate_ranking(
      rerank.k_reciprocal_rerank_features(q, g, k1=8, k2=3, lambda_value=0.4),
      *labels, max_rank=10)
  for method in ("dense", "sparse"):
    got = _from_config(dict(config, rerank_method=method), MeanColour(), query,
                       gallery, colours).run(State(), step=1)
    assert got["mAP"] == pytest.approx(want.mAP, abs=1e-9), method
    np.testing.assert_allclose(got["cmc"], want.cmc, atol=1e-9)
  config = {"metric": "cosine", "query_expansion": "alpha",
            "query_expansion_top_k": 4, "query_expansion_alpha": 2.0,
            "verification": True}
  got = _from_config(config, MeanColour(), query, gallery, colours).run(
      State(), step=1)
  eq, eg = expansion.expand_queries(q, g, method="alpha", top_k=4, alpha=2.0)
  # Ties (integer colours): rank the distances the runner computes.
  dist = np.asarray(distance.pairwise_distance(eq, eg, metric="cosine"))
  assert got["mAP"] == pytest.approx(
      metrics.evaluate_ranking(dist, *labels).mAP, abs=1e-6)
  roc = verification.roc_from_distmat(dist, *labels)
  assert got["tpr@fpr=0.01"] == pytest.approx(roc["tpr@fpr=0.01"], abs=1e-6)
  with pytest.raises(ValueError, match="rerank_method must be one of"):
    _from_config({"rerank_method": "fast"}, MeanColour(), query, gallery, colours)
