"""CUHK03 single-gallery-shot protocol and video (tracklet) helpers."""

import numpy as np
import pytest

from reidjax.evaluate import metrics, numpy_reference, video
from tests.evaluate.test_metrics import assert_same, make_problem


@pytest.mark.parametrize("seed, integer, method", [
    (0, False, "auto"), (1, True, "auto"), (2, True, "count")])
def test_cuhk03_matches_loop_reference(seed, integer, method):
  problem = make_problem(seed, integer=integer)
  expected = numpy_reference.evaluate_cuhk03_loop(
      *problem, max_rank=20, num_repeats=4, seed=seed)
  result = metrics.evaluate_ranking(*problem, max_rank=20, protocol="cuhk03",
                                    num_repeats=4, seed=seed, query_tile=16,
                                    method=method)
  assert_same(result, expected)
  # AP / INP are those of the full list: the Market-1501 values.
  market = numpy_reference.evaluate_ranking_loop(*problem, max_rank=20)
  assert result.mAP == pytest.approx(market.mAP, abs=1e-12)
  assert result.mINP == pytest.approx(market.mINP, abs=1e-12)
  assert not np.allclose(result.cmc, market.cmc)  # A different CMC.


def test_cuhk03_is_reproducible_and_tiling_independent():
  problem = make_problem(2)
  runs = [metrics.evaluate_cuhk03(*problem, num_repeats=4, seed=7,
                                  query_tile=tile) for tile in (16, 8)]
  np.testing.assert_array_equal(runs[0].cmc, runs[1].cmc)
  other = metrics.evaluate_cuhk03(*problem, num_repeats=4, seed=8,
                                  query_tile=16)
  assert not np.array_equal(other.cmc, runs[0].cmc)


def test_cuhk03_with_one_item_per_pid_is_market():
  # Nothing to sample: every pid has one gallery item, so single-shot CMC is
  # the deterministic Market-1501 CMC.
  rng = np.random.default_rng(3)
  num_g = 25
  g_pids = np.arange(num_g)
  g_camids = rng.integers(0, 3, num_g)
  q_pids = rng.integers(0, num_g, 30)
  q_camids = (g_camids[q_pids] + 1) % 3  # Never the gallery item's camera.
  distmat = rng.random((30, num_g)).astype(np.float32)
  expected = numpy_reference.evaluate_ranking_loop(
      distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10)
  result = metrics.evaluate_cuhk03(distmat, q_pids, g_pids, q_camids,
                                   g_camids, max_rank=10, num_repeats=2)
  assert_same(result, expected)


def test_cuhk03_draws_are_uniform():
  # Property of the sampler: floor(u * n) picks each of n items equally.
  u = metrics.single_shot_uniforms(0, np.arange(2000), 5, 3)
  assert u.shape == (2000, 5, 3) and u.dtype == np.float32
  assert 0.0 <= u.min() and u.max() < 1.0
  picks = np.floor(u * np.float32(7)).astype(int)
  counts = np.bincount(picks.reshape(-1), minlength=7)
  np.testing.assert_allclose(counts / counts.sum(), 1 / 7, atol=0.01)


def test_cuhk03_bad_repeats():
  with pytest.raises(ValueError, match="num_repeats"):
    metrics.evaluate_cuhk03(*make_problem(0), num_repeats=0)


# ----------------------------------------------------------------------------
# Video.


def test_aggregate_tracklets_against_loop():
  rng = np.random.default_rng(0)
  ids = rng.integers(10, 20, 60)
  feats = rng.normal(size=(60, 5)).astype(np.float32)
  pids = ids * 3  # constant within a tracklet
  camids = ids % 4
  for method, fn in (("mean", np.mean), ("max", np.max)):
    out = video.aggregate_tracklets(feats, ids, pids, camids, method=method)
    expected_ids = sorted(set(ids.tolist()))
    np.testing.assert_array_equal(out["ids"], expected_ids)
    for t, tid in enumerate(expected_ids):
      np.testing.assert_allclose(out["features"][t],
                                 fn(feats[ids == tid], axis=0), atol=1e-6)
      assert out["pids"][t] == tid * 3 and out["camids"][t] == tid % 4


def test_aggregate_tracklets_rejects_mixed_labels():
  with pytest.raises(ValueError, match="pids change within tracklet 1"):
    video.aggregate_tracklets(np.ones((3, 2)), [1, 1, 2], pids=[5, 6, 7])
  with pytest.raises(ValueError, match="method"):
    video.aggregate_tracklets(np.ones((3, 2)), [1, 1, 2], method="median")


def test_pool_clips_with_mask():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4, 3, 6)).astype(np.float32)
  mask = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 1], [1, 0, 1]], bool)
  mean = video.pool_clips(x, mask, "mean")
  top = video.pool_clips(x, mask, "max")
  for t in range(4):
    np.testing.assert_allclose(mean[t], x[t][mask[t]].mean(0), rtol=1e-6)
    np.testing.assert_allclose(top[t], x[t][mask[t]].max(0))
  np.testing.assert_allclose(video.pool_clips(x), x.mean(1), rtol=1e-6)
  with pytest.raises(ValueError, match="no valid clip"):
    video.pool_clips(x, np.zeros((4, 3), bool))


def test_tracklets_ranked_as_items():
  # Frames of a tracklet pooled, then the tracklets ranked by the image
  # protocol: same as ranking the pooled features by hand.
  rng = np.random.default_rng(2)
  track_pid = np.repeat(np.arange(1, 9), 3)  # 24 gallery tracklets
  track_cam = np.tile([0, 1, 2], 8)
  frames = np.repeat(np.arange(24), 5)
  feats = (track_pid[frames, None] * 0.3
           + rng.normal(size=(frames.size, 4))).astype(np.float32)
  g = video.aggregate_tracklets(feats, frames, track_pid[frames],
                                track_cam[frames])
  q_feats = (np.arange(1, 9)[:, None] * 0.3
             + rng.normal(size=(8, 4))).astype(np.float32)
  q_pids, q_cams = np.arange(1, 9), np.zeros(8, int)
  dist = ((q_feats[:, None] - g["features"][None]) ** 2).sum(-1)
  expected = numpy_reference.evaluate_ranking_loop(dist, q_pids, g["pids"],
                                                   q_cams, g["camids"])
  assert_same(metrics.evaluate_ranking(dist, q_pids, g["pids"], q_cams,
                                       g["camids"]), expected)
