"""Tests for reidjax.evaluate.distance against NumPy float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reidjax.evaluate import distance


def features(seed, n, dim=16, scale=3.0):
  return scale * np.random.default_rng(seed).normal(size=(n, dim)).astype(
      np.float32)


def test_euclidean_matches_numpy():
  q, g = features(0, 7), features(1, 11)
  expected = ((q[:, None, :].astype(np.float64) - g[None, :, :]) ** 2).sum(-1)
  result = distance.pairwise_distance(q, g, metric="euclidean")
  assert isinstance(result, jax.Array)
  assert result.shape == (7, 11) and result.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(result), expected, rtol=1e-5, atol=1e-3)


def test_cosine_matches_numpy():
  q, g = features(2, 5), features(3, 9)
  q64, g64 = q.astype(np.float64), g.astype(np.float64)
  cos = (q64 @ g64.T) / np.outer(np.linalg.norm(q64, axis=1),
                                 np.linalg.norm(g64, axis=1))
  result = distance.pairwise_distance(q, g, metric="cosine")
  np.testing.assert_allclose(np.asarray(result), 1.0 - cos, rtol=0, atol=1e-6)
  # Scale invariance: only directions matter.
  scaled = distance.pairwise_distance(q * 7.0, g * 0.01, metric="cosine")
  np.testing.assert_allclose(np.asarray(scaled), 1.0 - cos, rtol=0, atol=1e-6)


def test_euclidean_self_distance_is_clamped_at_zero():
  # Large norms: ||q||^2 + ||g||^2 - 2 q.g cancels badly for q == g.
  x = features(4, 6, dim=64, scale=100.0) + 1000.0
  result = np.asarray(distance.pairwise_distance(x, x))
  assert np.all(result >= 0.0)
  # Off-diagonal distances dwarf the cancellation error on the diagonal.
  off_diag = result[~np.eye(6, dtype=bool)]
  assert np.all(np.diag(result) < 1e-3 * off_diag.min())


def test_cosine_zero_feature_is_at_distance_one():
  q = np.zeros((1, 8), np.float32)
  g = features(5, 3, dim=8)
  np.testing.assert_allclose(
      np.asarray(distance.pairwise_distance(q, g, metric="cosine")), 1.0,
      rtol=0, atol=0)


def test_half_precision_inputs_give_float32():
  q, g = features(6, 4), features(7, 5)
  result = distance.pairwise_distance(q.astype(jnp.bfloat16),
                                      g.astype(jnp.bfloat16), metric="cosine")
  assert result.dtype == jnp.float32
  reference = distance.pairwise_distance(
      np.asarray(q.astype(jnp.bfloat16), np.float32),
      np.asarray(g.astype(jnp.bfloat16), np.float32), metric="cosine")
  np.testing.assert_allclose(np.asarray(result), np.asarray(reference),
                             rtol=0, atol=1e-6)


def test_bad_arguments():
  q, g = features(0, 3, dim=4), features(1, 2, dim=5)
  with pytest.raises(ValueError, match=r"\(3, 4\) and \(2, 5\)"):
    distance.pairwise_distance(q, g)
  with pytest.raises(ValueError, match="metric must be one of"):
    distance.pairwise_distance(q, q, metric="manhattan")
