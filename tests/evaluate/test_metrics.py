"""Tests for reidjax.evaluate.metrics against the NumPy references."""

import json
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from reidjax.evaluate import counting, metrics
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
@pytest.mark.parametrize("method", metrics.METHODS)
def test_matches_loop_reference(seed, integer, query_tile, method):
  problem = make_problem(seed, integer=integer)
  expected = numpy_reference.evaluate_ranking_loop(*problem, max_rank=20)
  result = metrics.evaluate_ranking(*problem, max_rank=20,
                                    query_tile=query_tile, method=method)
  assert_same(result, expected)
  assert expected.num_skipped_queries >= 3  # the forced edge cases
  assert result.cmc.dtype == np.float64


@pytest.mark.parametrize("block,slots", [(1, 1), (4, 3), (4, 4), (2, 8)])
def test_counting_kernel_ranks_equal_numpy_counts(block, slots):
  """Every match's rank = #{kept i: d_i < t_j or (d_i == t_j and i < k_j)},
  counted in NumPy; integer distances make many ties."""
  dist, *labels = make_problem(1, integer=True)
  matches, _ = metrics.prepare_matches(*dist.shape, *labels)
  rows = np.flatnonzero(matches.num_matches > 0)
  tile = -(-rows.size // block) * block
  kin = counting.kernel_inputs(rows, matches, tile)
  padded = np.zeros((tile, dist.shape[1]), np.float32)
  padded[:rows.size] = dist[rows]
  ranks = np.asarray(counting.match_ranks(
      jnp.asarray(padded), **{k: jnp.asarray(v) for k, v in kin.items()},
      block=block, slots=slots))
  index = np.arange(dist.shape[1])
  for r, q in enumerate(rows):
    kept = np.ones(dist.shape[1], bool)
    kept[matches.removed_idx[q][matches.removed_mask[q]]] = False
    for j in range(matches.num_matches[q]):
      k = matches.match_idx[q, j]
      t = dist[q, k]
      expected = np.sum(kept & ((dist[q] < t) | ((dist[q] == t) & (index < k))))
      assert ranks[r, j] == expected, (q, j)


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("integer", [False, True])
def test_vectorized_numpy_matches_loop(seed, integer):
  problem = make_problem(seed, integer=integer)
  expected = numpy_reference.evaluate_ranking_loop(*problem, max_rank=20)
  result = numpy_reference.evaluate_ranking_vectorized_numpy(
      *problem, max_rank=20, block=16)
  assert_same(result, expected)


@pytest.mark.parametrize("method", metrics.METHODS)
def test_fewer_gallery_items_than_max_rank(method):
  problem = make_problem(4, num_q=NUM_Q, num_g=30, integer=True)
  expected = numpy_reference.evaluate_ranking_loop(*problem, max_rank=50)
  result = metrics.evaluate_ranking(*problem, max_rank=50, method=method)
  vectorized = numpy_reference.evaluate_ranking_vectorized_numpy(
      *problem, max_rank=50)
  assert_same(result, expected)
  assert_same(vectorized, expected)
  # Padded with the last value: constant 1 from the last possible rank on.
  np.testing.assert_array_equal(result.cmc[29:], 1.0)
  assert np.all(np.diff(result.cmc) >= 0)


@pytest.mark.parametrize("method", metrics.METHODS)
def test_infinite_distances_keep_the_tie_rule(method):
  distmat, *labels = make_problem(5, integer=True)
  rng = np.random.default_rng(5)
  distmat[rng.random(distmat.shape) < 0.3] = np.inf  # ties at +inf too
  distmat[rng.random(distmat.shape) < 0.05] = -np.inf
  expected = numpy_reference.evaluate_ranking_loop(distmat, *labels)
  assert_same(metrics.evaluate_ranking(distmat, *labels, method=method),
              expected)


@pytest.mark.parametrize("method", metrics.METHODS)
def test_negative_distances_and_signed_zeros(method):
  # Similarity-like scores: negatives, and -0.0 / +0.0, which must tie (the
  # head method's integer keys must not order them).
  distmat, *labels = make_problem(8, integer=True)
  distmat = distmat - 3.0
  rng = np.random.default_rng(8)
  zeros = rng.random(distmat.shape) < 0.2
  distmat[zeros] = np.where(rng.random(zeros.sum()) < 0.5, -0.0, 0.0)
  assert np.signbit(distmat[distmat == 0]).any()
  expected = numpy_reference.evaluate_ranking_loop(distmat, *labels)
  assert_same(metrics.evaluate_ranking(distmat, *labels, method=method),
              expected)


def test_float_keys_order_like_floats():
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.normal(size=500).astype(np.float32) * 1e3,
                      np.float32([0.0, -0.0, np.inf, -np.inf, 1e-40, -1e-40])])
  keys = metrics.float_keys(x)
  for i in range(0, x.size, 7):
    np.testing.assert_array_equal(keys < keys[i], x < x[i])
    np.testing.assert_array_equal(keys == keys[i], x == x[i])


def test_auto_mixes_head_and_kernel_rows(monkeypatch):
  # Rows whose matches are all near the top (small heads) and rows whose
  # last match is at the bottom (head = the whole gallery): "auto" sends the
  # first to the head method and the second to the kernel.
  distmat, q_pids, g_pids, q_camids, g_camids = make_problem(9)
  same = q_pids[:, None] == g_pids[None, :]
  deep = np.arange(NUM_Q) % 2 == 1
  distmat = np.where(same & ~deep[:, None], distmat * 0.01, distmat)
  distmat = np.where(same & deep[:, None], 2.0 + distmat, distmat)
  distmat = distmat.astype(np.float32)
  calls = []
  kernel = counting.match_ranks
  monkeypatch.setattr(counting, "match_ranks",
                      lambda *a, **k: calls.append(1) or kernel(*a, **k))
  expected = numpy_reference.evaluate_ranking_loop(
      distmat, q_pids, g_pids, q_camids, g_camids)
  result = metrics.evaluate_ranking(distmat, q_pids, g_pids, q_camids,
                                    g_camids, method="auto")
  assert_same(result, expected)
  assert calls  # Deep rows went to the kernel...
  head, rest = counting.head_counts(
      distmat, metrics.prepare_matches(NUM_Q, NUM_G, q_pids, g_pids, q_camids,
                                       g_camids)[0], np.arange(NUM_Q),
      force=False)
  del head
  assert 0 < rest.size < deep.sum() + 3  # ...and only those (+ skipped ones).
  assert set(rest) <= set(np.flatnonzero(deep))
  # A NaN in a kernel row is caught too.
  row = rest[0]
  distmat[row, 100] = np.nan
  with pytest.raises(ValueError, match=rf"query {row}, gallery 100\)"):
    metrics.evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids)


def test_all_same_camera():
  # One camera everywhere: every same-pid item is removed, nothing is valid.
  distmat, q_pids, g_pids, _, _ = make_problem(10)
  zeros_q, zeros_g = np.zeros(NUM_Q, int), np.zeros(NUM_G, int)
  with pytest.raises(ValueError, match="queries skipped"):
    metrics.evaluate_ranking(distmat, q_pids, g_pids, zeros_q, zeros_g)
  # Without the camera filter, same-camera items are matches: the loop
  # reference with the query in a camera no gallery item has.
  expected = numpy_reference.evaluate_ranking_loop(
      distmat, q_pids, g_pids, zeros_q + 1, zeros_g)
  with pytest.warns(UserWarning, match="optimistic"):
    result = metrics.evaluate_ranking(distmat, q_pids, g_pids, None, None,
                                      camera_filter=False)
  assert_same(result, expected)
  assert result.num_skipped_queries == 1  # Only the pid absent from gallery.


def test_camera_filter_true_needs_camids():
  distmat, q_pids, g_pids, q_camids, _ = make_problem(0)
  with pytest.raises(ValueError, match="camera_filter=False"):
    metrics.evaluate_ranking(distmat, q_pids, g_pids, q_camids, None)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # The default path does not warn.
    metrics.evaluate_ranking(*make_problem(0))


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
  kernel = counting.match_ranks
  metrics.evaluate_ranking(*problem, query_tile=8, method="count")
  size = kernel._cache_size()  # pylint: disable=protected-access
  # Other data with the same (tile, G, M, K) shapes: 5 tiles, no new compile.
  distmat, *labels = problem
  metrics.evaluate_ranking(distmat[::-1].copy(), *labels, query_tile=8,
                           method="count")
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
  with pytest.raises(ValueError, match="protocol must be one of"):
    metrics.evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids,
                             protocol="viper")
  with pytest.raises(ValueError, match="method must be one of"):
    metrics.evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids,
                             method="sort")


@pytest.mark.parametrize("method", metrics.METHODS)
# Query 0 has no match (skipped); in query 5, gallery 299 is far down its list.
@pytest.mark.parametrize("query, gallery", [(7, 11), (0, 3), (5, 299)])
def test_nan_raises(method, query, gallery):
  distmat, *labels = make_problem(0)
  distmat[query, gallery] = np.nan
  with pytest.raises(ValueError,
                     match=rf"NaN.*query {query}, gallery {gallery}\)"):
    metrics.evaluate_ranking(distmat, *labels, method=method)
  with pytest.raises(ValueError, match="NaN"):
    metrics.evaluate_ranking(jnp.asarray(distmat), *labels, method=method)


@pytest.mark.parametrize("fn", ALL_IMPLEMENTATIONS)
def test_no_valid_query_raises(fn):
  distmat = np.zeros((2, 3), np.float32)
  # Query 0's matches are all same-camera; query 1's pid is not in the gallery.
  with pytest.raises(ValueError, match="all 2 queries skipped"):
    fn(distmat, [1, 2], [1, 1, 0], [0, 0], [0, 0, 1])


def test_auto_sends_uniform_random_rows_to_the_kernel(monkeypatch):
  # Uniform random distances: every row's head is most of G, so "auto"
  # skips the host pass (a sample of rows decides) and counts every row in
  # the kernel; a trained-like matrix (matches near the top) does not.
  distmat, q_pids, g_pids, q_camids, g_camids = make_problem(11)
  uniform = np.random.default_rng(3).random(distmat.shape).astype(np.float32)
  matches, _ = metrics.prepare_matches(NUM_Q, NUM_G, q_pids, g_pids, q_camids,
                                       g_camids)
  assert metrics._sample_prefers_kernel(uniform, matches)  # pylint: disable=protected-access
  near = np.where(q_pids[:, None] == g_pids[None, :], 0.01 * uniform, uniform)
  assert not metrics._sample_prefers_kernel(near, matches)  # pylint: disable=protected-access
  monkeypatch.setattr(counting, "head_counts", None)  # Must not be called.
  assert_same(metrics.evaluate_ranking(uniform, q_pids, g_pids, q_camids,
                                       g_camids),
              numpy_reference.evaluate_ranking_loop(uniform, q_pids, g_pids,
                                                    q_camids, g_camids))
