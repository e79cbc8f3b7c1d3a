"""Streaming from features (reidjax.evaluate.streaming) against the full matrix."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from reidjax import sharding
from reidjax.evaluate import distance, metrics, numpy_reference, streaming
from tests.evaluate.test_metrics import assert_same

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def make_features(seed, num_q=50, num_g=170, dim=8, integer=False):
  """Labels plus features; query 0's pid is absent from the gallery."""
  rng = np.random.default_rng(seed)
  g_pids = rng.integers(0, 15, num_g)
  q_pids = rng.integers(1, 15, num_q)
  q_pids[0] = 99
  q_cams, g_cams = rng.integers(0, 4, num_q), rng.integers(0, 4, num_g)
  if integer:  # Exact distances and many ties.
    q = rng.integers(-2, 3, (num_q, dim)).astype(np.float32)
    g = rng.integers(-2, 3, (num_g, dim)).astype(np.float32)
  else:
    centres = rng.normal(size=(100, dim)).astype(np.float32)
    q = centres[q_pids] + rng.normal(size=(num_q, dim)).astype(np.float32)
    g = centres[g_pids] + rng.normal(size=(num_g, dim)).astype(np.float32)
  return q, g, q_pids, g_pids, q_cams, g_cams


# Integer features: exact distances with many exact ties. Normalised ones are
# rounded, and the matmul's rounding depends on its number of rows, so exact
# ties could break differently: random features (no near-ties) there.
@pytest.mark.parametrize("integer, metric, normalize", [
    (True, "euclidean", False), (False, "euclidean", False),
    (False, "cosine", False), (False, "euclidean", True)])
def test_streaming_equals_full_matrix(integer, metric, normalize):
  q, g, *labels = make_features(0, integer=integer)
  dist = np.asarray(distance.pairwise_distance(q, g, metric=metric,
                                               normalize=normalize))
  expected = metrics.evaluate_ranking(dist, *labels, max_rank=30)
  # The loop reference too: the matrix path is itself checked elsewhere.
  np.testing.assert_allclose(
      expected.cmc, metrics.evaluate_ranking(dist, *labels, max_rank=30,
                                             method="count").cmc)
  result = streaming.evaluate_features(q, g, *labels, metric=metric,
                                       normalize=normalize, max_rank=30,
                                       query_tile=16)
  assert_same(result, expected)
  assert result.num_skipped_queries >= 1


def test_streaming_cuhk03_and_camera_filter():
  q, g, *labels = make_features(1, integer=True)
  dist = np.asarray(distance.pairwise_distance(q, g))
  expected = numpy_reference.evaluate_cuhk03_loop(dist, *labels,
                                                  num_repeats=3, seed=5)
  result = streaming.evaluate_features(q, g, *labels, protocol="cuhk03",
                                       num_repeats=3, seed=5, query_tile=16)
  assert_same(result, expected)
  expected = numpy_reference.evaluate_ranking_loop(
      dist, labels[0], labels[1], np.zeros(50, int), np.ones(170, int))
  with pytest.warns(UserWarning, match="optimistic"):
    result = streaming.evaluate_features(q, g, labels[0], labels[1], None,
                                         None, camera_filter=False)
  assert_same(result, expected)


def test_streaming_nan_and_shape_errors():
  q, g, *labels = make_features(2)
  q[3, 0] = np.nan
  with pytest.raises(ValueError, match="query 3 contain NaN"):
    streaming.evaluate_features(q, g, *labels)
  with pytest.raises(ValueError, match="same D"):
    streaming.evaluate_features(q[:, :4], g, *labels)


def test_nan_scan_is_skipped_only_when_no_distance_can_be_nan():
  q, g, *_ = make_features(2)
  mesh = sharding.make_data_mesh()
  side = lambda x, metric: streaming.prepare_pair(x, x, metric, False,
                                                  1e-12, mesh)[1]
  for metric in ("euclidean", "cosine"):
    assert streaming.cannot_be_nan(side(q, metric), side(g, metric))
  bad = q.copy()
  bad[3, 0] = np.inf
  for metric in ("euclidean", "cosine"):
    assert not streaming.cannot_be_nan(side(bad, metric), side(g, metric))
  # Finite, but ||q||^2 + ||g||^2 can overflow (so can inf - inf): scan.
  big = np.full((2, 4), 4e18, np.float32)  # ||x||^2 = 6.4e37 each.
  assert np.isfinite(side(big, "euclidean")["sq"]).all()
  assert not streaming.cannot_be_nan(side(big, "euclidean"),
                                     side(big, "euclidean"))
  assert streaming.cannot_be_nan(side(big / 4, "euclidean"),
                                 side(big / 4, "euclidean"))


def test_host_empty_is_aligned_and_used_in_place_on_cpu():
  for shape, dtype in (((3, 5), np.float32), ((7,), np.int64), ((0, 4),
                                                               np.float16)):
    x = sharding.host_empty(shape, dtype)
    assert x.shape == shape and x.dtype == dtype
    assert x.size == 0 or x.ctypes.data % 64 == 0
  g = sharding.host_empty((300, 16), np.float32)
  g[...] = np.arange(g.size, dtype=np.float32).reshape(g.shape)
  device_copy = streaming.replicate(g, sharding.make_data_mesh())
  # The CPU backend aliases the host array: no second copy of a gallery.
  assert device_copy.addressable_data(0).unsafe_buffer_pointer() == (
      g.ctypes.data)
  np.testing.assert_array_equal(np.asarray(device_copy), g)


def test_two_devices_subprocess():
  out = subprocess.run(
      [sys.executable, "-m", "tests.evaluate.run_streaming", "--devices", "2"],
      cwd=_ROOT, capture_output=True, text=True, timeout=300, check=True,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["devices"] == 2
  for key in ("features_market1501", "pair_matrix", "pair", "two_stage_full",
              "two_stage_cuhk03", "two_stage_sum"):
    assert result[key] <= 1e-6, (key, result)
  assert 0 < result["mAP_market1501"] < 1 and 0 < result["mAP_pair"] < 1
