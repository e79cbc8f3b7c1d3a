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


def test_normalize_matches_numpy():
  q, g = features(8, 6), features(9, 7)
  qn = q / np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
  gn = g / np.linalg.norm(g.astype(np.float64), axis=1, keepdims=True)
  expected = ((qn[:, None, :] - gn[None, :, :]) ** 2).sum(-1)
  result = distance.pairwise_distance(q, g, metric="euclidean",
                                      normalize=True)
  np.testing.assert_allclose(np.asarray(result), expected, rtol=0, atol=1e-5)
  # Normalised: 2 - 2 cos, i.e. twice the cosine distance.
  cosine = distance.pairwise_distance(q, g, metric="cosine")
  np.testing.assert_allclose(np.asarray(result), 2 * np.asarray(cosine),
                             rtol=0, atol=1e-5)


def test_flip_average():
  from reidjax.evaluate import features as features_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, 4, 5, 3)).astype(np.float32)  # NHWC
  w = rng.normal(size=(4 * 5 * 3, 2)).astype(np.float32)

  def embed(inputs):
    x = inputs["images"]
    return {"global": x.reshape(x.shape[0], -1) @ w, "first": x[:, 0, 0, :]}

  out = features_lib.flip_average(embed)({"images": jnp.asarray(images)})
  mirrored = images[:, :, ::-1, :]
  np.testing.assert_allclose(
      np.asarray(out["global"]),
      (images.reshape(3, -1) @ w + mirrored.reshape(3, -1) @ w) / 2,
      rtol=1e-5, atol=1e-5)
  # Column 0 of the mirror is the last column: averaged with column 0.
  np.testing.assert_allclose(np.asarray(out["first"]),
                             (images[:, 0, 0] + images[:, 0, -1]) / 2)
  # Clips (N, T, H, W, C): the width axis is still the one flipped.
  clips = rng.normal(size=(2, 3, 4, 5, 3)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(features_lib.flip_images(clips)),
                                clips[..., ::-1, :])
