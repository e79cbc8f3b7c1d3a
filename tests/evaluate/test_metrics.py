"""Tests for reidjax.evaluate.metrics against the NumPy references."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from reidjax.evaluate import metrics
from reidjax.evaluate import numpy_reference

ALL_IMPLEMENTATIONS = [metrics.evaluate_ranking,
                       numpy_reference.evaluate_ranking_loop,
                       numpy_reference.evaluate_ranking_vectorized_numpy]

# One gallery size for most tests, so the kernel compiles few shapes.
NUM_Q, NUM_G, NUM_IDS, NUM_CAMS = 40, 300, 12, 4


def make_problem(seed, num_q=NUM_Q, num_g=NUM_G, integer=False):
  """Random labels and distances with the protocol's edge cases forced in.

  Query 0: all its gallery items are in its own camera (skipped).
  Query 1: its only gallery item is in its own camera (skipped).
  Query 2: its pid is absent from the gallery (skipped).
  Query 3: exactly one cross-camera match, plus same-camera items.
  The gallery has pid 0 distractors.
  """
  rng = np.random.default_rng(seed)
  g_pids = rng.integers(0, NUM_IDS + 1, num_g)  # 0 = distractor
  g_camids = rng.integers(0, NUM_CAMS, num_g)
  q_pids = rng.integers(1, NUM_IDS + 1, num_q)
  q_camids = rng.integers(0, NUM_CAMS, num_q)

  reserved = list(range(NUM_IDS + 1, NUM_IDS + 4))  # pids for queries 0..2
  q_pids[:4] = reserved + [1]
  q_camids[:4] = [0, 1, 2, 3]
  g_pids[:5], g_camids[:5] = reserved[0], 0  # query 0: same camera only
  g_pids[5], g_camids[5] = reserved[1], 1  # query 1: one, same camera
  # query 2's pid (reserved[2]) never appears in the gallery.
  g_pids[6:8] = [1, 0]  # at least one pid 1 item and one distractor
  pid1 = np.flatnonzero(g_pids == 1)
  g_camids[pid1] = 3  # query 3 (pid 1, cam 3): all same camera...
  g_camids[pid1[0]] = 1  # ...but one.

  if integer:  # Many exact ties.
    distmat = rng.integers(0, 6, (num_q, num_g)).astype(np.float32)
  else:
    distmat = rng.random((num_q, num_g), dtype=np.float32)
    # Structure: pull same-pid pairs closer, so ranks are not all random.
    same = q_pids[:, None] == g_pids[None, :]
    distmat[same] *= rng.uniform(0.2, 1.0, same.sum()).astype(np.float32)
  return distmat, q_pids, g_pids, q_camids, g_camids


def assert_same(result, expected, atol=1e-6):
  assert result.num_valid_queries == expected.num_valid_queries
  assert result.num_skipped_queries == expected.num_skipped_queries
  assert result.cmc.shape == expected.cmc.shape
  np.testing.assert_allclose(result.cmc, expected.cmc, rtol=0, atol=atol)
  assert result.mAP == pytest.approx(expected.mAP, rel=0, abs=atol)
  assert result.mINP == pytest.approx(expected.mINP, rel=0, abs=atol)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("integer", [False, True])
# query_tile 16 and 7 do not divide 40 queries.
@pytest.mark.parametrize("query_tile", [None, 16, 7])
def test_matches_loop_reference(seed, integer, query_tile):
  problem = make_problem(seed, integer=integer)
  expected = numpy_reference.evaluate_ranking_loop(*problem, max_rank=20)
  result = metrics.evaluate_ranking(*problem, max_rank=20,
                                    query_tile=query_tile)
  assert_same(result, expected)
  assert expected.num_skipped_queries >= 3  # the forced edge cases
  assert result.cmc.dtype == np.float64


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("integer", [False, True])
def test_vectorized_numpy_matches_loop(seed, integer):
  problem = make_problem(seed, integer=integer)
  expected = numpy_reference.evaluate_ranking_loop(*problem, max_rank=20)
  result = numpy_reference.evaluate_ranking_vectorized_numpy(
      *problem, max_rank=20, block=16)
  assert_same(result, expected)


def test_fewer_gallery_items_than_max_rank():
  problem = make_problem(4, num_q=NUM_Q, num_g=30, integer=True)
  expected = numpy_reference.evaluate_ranking_loop(*problem, max_rank=50)
  result = metrics.evaluate_ranking(*problem, max_rank=50)
  vectorized = numpy_reference.evaluate_ranking_vectorized_numpy(
      *problem, max_rank=50)
  assert_same(result, expected)
  assert_same(vectorized, expected)
  # Padded with the last value: constant 1 from the last possible rank on.
  np.testing.assert_array_equal(result.cmc[29:], 1.0)
  assert np.all(np.diff(result.cmc) >= 0)


def test_infinite_distances_keep_the_tie_rule():
  distmat, *labels = make_problem(5, integer=True)
  rng = np.random.default_rng(5)
  distmat[rng.random(distmat.shape) < 0.3] = np.inf  # ties at +inf too
  distmat[rng.random(distmat.shape) < 0.05] = -np.inf
  expected = numpy_reference.evaluate_ranking_loop(distmat, *labels)
  assert_same(metrics.evaluate_ranking(distmat, *labels), expected)


def test_jax_array_and_float64_inputs():
  distmat, *labels = make_problem(6)
  expected = numpy_reference.evaluate_ranking_loop(distmat, *labels)
  assert_same(metrics.evaluate_ranking(jnp.asarray(distmat), *labels,
                                       query_tile=16), expected)
  # float64 values that are exact float32 rank identically.
  assert_same(metrics.evaluate_ranking(distmat.astype(np.float64), *labels,
                                       query_tile=16), expected)


# Hand-computed: query pid 1, camera 0; gallery (index: pid, cam, distance).
#   0: pid 1, cam 0, 0.1  -> removed (same pid and camera)
#   1: pid 2, cam 1, 0.2
#   2: pid 1, cam 1, 0.4  -> match
#   3: pid 0, cam 2, d3   (distractor)
#   4: pid 1, cam 2, 0.4  -> match, ties with index 2 which ranks first
# d3 = 0.3: order 1, 3, 2, 4 -> match ranks (0-based) 2, 3.
#   CMC = [0, 0, 1, 1, 1]; AP = (1/3 + 2/4) / 2 = 5/12; INP = 2/4.
# d3 = 0.4: order 1, 2, 3, 4 (index breaks the three-way tie) -> ranks 1, 3.
#   CMC = [0, 1, 1, 1, 1]; AP = (1/2 + 2/4) / 2 = 1/2; INP = 2/4.
@pytest.mark.parametrize("d3, cmc, ap, inp", [
    (0.3, [0, 0, 1, 1, 1], 5 / 12, 0.5),
    (0.4, [0, 1, 1, 1, 1], 0.5, 0.5),
])
@pytest.mark.parametrize("fn", ALL_IMPLEMENTATIONS)
def test_hand_computed(fn, d3, cmc, ap, inp):
  distmat = np.array([[0.1, 0.2, 0.4, d3, 0.4]], np.float32)
  result = fn(distmat, [1], [1, 2, 1, 0, 1], [0], [0, 1, 1, 2, 2], max_rank=5)
  np.testing.assert_allclose(result.cmc, cmc, rtol=0, atol=1e-12)
  assert result.mAP == pytest.approx(ap, abs=1e-7)
  assert result.mINP == pytest.approx(inp, abs=1e-7)
  assert (result.num_valid_queries, result.num_skipped_queries) == (1, 0)


def test_one_compiled_shape_for_all_tiles():
  problem = make_problem(7)
  kernel = metrics._match_ranks  # pylint: disable=protected-access
  metrics.evaluate_ranking(*problem, query_tile=8)
  size = kernel._cache_size()  # pylint: disable=protected-access
  # Other data with the same (tile, G, M, K) shapes: 5 tiles, no new compile.
  distmat, *labels = problem
  metrics.evaluate_ranking(distmat[::-1].copy(), *labels, query_tile=8)
  assert kernel._cache_size() == size  # pylint: disable=protected-access


def test_to_dict_is_json_ready():
  result = metrics.evaluate_ranking(*make_problem(0), max_rank=20)
  d = json.loads(json.dumps(result.to_dict()))
  assert d["rank1"] == result.cmc[0]
  assert d["rank5"] == result.cmc[4]
  assert d["rank10"] == result.cmc[9]
  assert d["cmc"] == result.cmc.tolist()
  assert d["mAP"] == result.mAP and d["mINP"] == result.mINP
  assert d["num_valid_queries"] + d["num_skipped_queries"] == NUM_Q
  short = metrics.RankingMetrics(np.array([0.5, 1.0]), 0.5, 0.25, 2, 0)
  assert sorted(short.to_dict()) == [
      "cmc", "mAP", "mINP", "num_skipped_queries", "num_valid_queries",
      "rank1"]


def test_shape_errors_name_the_arrays():
  distmat, q_pids, g_pids, q_camids, g_camids = make_problem(0)
  with pytest.raises(ValueError,
                     match=r"query_pids has shape \(39,\).*\(40, 300\)"):
    metrics.evaluate_ranking(distmat, q_pids[:-1], g_pids, q_camids, g_camids)
  with pytest.raises(ValueError, match=r"gallery_camids has shape \(301,\)"):
    metrics.evaluate_ranking(distmat, q_pids, g_pids, q_camids,
                             np.append(g_camids, 0))
  with pytest.raises(ValueError, match=r"distmat must be .*2-D"):
    metrics.evaluate_ranking(distmat[0], q_pids, g_pids, q_camids, g_camids)
  with pytest.raises(TypeError, match="query_camids must hold integers"):
    metrics.evaluate_ranking(distmat, q_pids, g_pids, q_camids * 1.0, g_camids)
  with pytest.raises(ValueError, match="max_rank"):
    metrics.evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids,
                             max_rank=0)
  with pytest.raises(ValueError, match="query_tile"):
    metrics.evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids,
                             query_tile=0)


def test_nan_raises():
  distmat, *labels = make_problem(0)
  distmat[7, 11] = np.nan
  with pytest.raises(ValueError, match=r"NaN.*query 7, gallery 11"):
    metrics.evaluate_ranking(distmat, *labels)
  with pytest.raises(ValueError, match="NaN"):
    metrics.evaluate_ranking(jnp.asarray(distmat), *labels)


@pytest.mark.parametrize("fn", ALL_IMPLEMENTATIONS)
def test_no_valid_query_raises(fn):
  distmat = np.zeros((2, 3), np.float32)
  # Query 0's matches are all same-camera; query 1's pid is not in the gallery.
  with pytest.raises(ValueError, match="all 2 queries skipped"):
    fn(distmat, [1, 2], [1, 1, 0], [0, 0], [0, 0, 1])
