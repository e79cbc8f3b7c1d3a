"""DuATM's losses (Si et al. CVPR 2018, Eq. 6-8) against NumPy.

Eq. 7 and Eq. 8 live beside the layer (reidjax.layers.dual_attention); Eq. 6
is the shared batch-hard triplet loss on the layer's distance matrix.
"""

import jax
import numpy as np
import pytest

from reidjax import losses
from reidjax import layers
from reidjax.layers import DualAttention
from tests.layers import duatm_reference as ref


def sequences(seed, lengths, max_len, dim, garbage=np.nan):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(len(lengths), max_len, dim))
  x /= np.linalg.norm(x, axis=-1, keepdims=True)
  mask = np.arange(max_len)[None, :] < np.array(lengths)[:, None]
  x[~mask] = garbage
  return x.astype(np.float32), mask


def numpy_decorrelation(x, mask):
  """Eq. 7 per sequence with X = D x N of its valid vectors, then the mean."""
  values = []
  for k in range(len(x)):
    big_x = x[k][mask[k]].astype(np.float64).T  # D x N
    n = big_x.shape[1]
    residual = np.eye(n) - big_x.T @ big_x
    values.append(sum(residual[s, t] ** 2 for s in range(n)
                      for t in range(n)) / n ** 2)
  return np.mean(values)


def test_decorrelation_matches_numpy_with_masks():
  x, mask = sequences(0, (6, 2, 4, 1), 6, 5)
  result = layers.decorrelation_loss(x, mask)
  np.testing.assert_allclose(result, numpy_decorrelation(x, mask), rtol=1e-5)
  full, full_mask = sequences(1, (4, 4), 4, 5)
  np.testing.assert_allclose(layers.decorrelation_loss(full),
                             numpy_decorrelation(full, full_mask), rtol=1e-5)


def test_decorrelation_is_zero_for_orthonormal_sequences():
  q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(8, 8)))
  x = q.T[None, :5].astype(np.float32)  # 5 orthonormal vectors in R^8.
  assert float(layers.decorrelation_loss(x)) < 1e-10


def test_decorrelation_gradient_matches_closed_form():
  # d/dX (1/N^2)||I - X^T X||_F^2 = -(4/N^2) X (I - X^T X), per sequence,
  # divided by the batch size for the mean; zero at padded positions.
  x, mask = sequences(3, (5, 3), 5, 4)
  grad = np.asarray(jax.grad(layers.decorrelation_loss)(x, mask))
  for k in range(2):
    big_x = x[k][mask[k]].astype(np.float64).T
    n = big_x.shape[1]
    expected = -4.0 / n ** 2 * big_x @ (np.eye(n) - big_x.T @ big_x) / 2
    np.testing.assert_allclose(grad[k][mask[k]], expected.T, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_array_equal(grad[k][~mask[k]], 0.0)


def test_random_convex_weights_are_convex_and_respect_masks():
  mask = np.arange(16)[None, :] < np.random.default_rng(4).integers(
      1, 17, size=(2000, 1))
  weights = np.asarray(layers.random_convex_weights(
      jax.random.key(0), mask, drop_probability=0.2))
  assert np.all(weights >= 0)
  np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(weights[~mask], 0.0)
  # About p of the valid weights are reset to 0. Only rows where not all
  # were reset count (those fall back to uniform): 0.2^S is tiny for S > 2.
  rows = mask.sum(1) > 4
  zero_fraction = (weights[rows] == 0)[mask[rows]].mean()
  assert abs(zero_fraction - 0.2) < 0.01, zero_fraction
  # Same key, same weights; another key, other weights.
  again = layers.random_convex_weights(jax.random.key(0), mask)
  other = layers.random_convex_weights(jax.random.key(1), mask)
  np.testing.assert_array_equal(again, weights)
  assert not np.allclose(other, weights)


def test_random_convex_weights_are_normalised_uniforms_when_p_is_zero():
  mask = np.ones((20000, 2), bool)
  weights = np.asarray(layers.random_convex_weights(
      jax.random.key(3), mask, drop_probability=0.0))
  assert np.all(weights > 0)
  # w_1 = u_1 / (u_1 + u_2) with u ~ U[0, 1]: P(w_1 < 1/3) = P(u_1 < u_2 / 2)
  # = 1/4 (a flat Dirichlet would give 1/3).
  assert abs((weights[:, 0] < 1 / 3).mean() - 0.25) < 0.015


def test_random_convex_weights_fall_back_to_uniform_when_all_dropped():
  mask = np.arange(5)[None, :] < np.array([[5], [2], [1]])
  weights = np.asarray(layers.random_convex_weights(
      jax.random.key(0), mask, drop_probability=1.0))
  np.testing.assert_allclose(weights, mask / mask.sum(1, keepdims=True))


def test_random_convex_combination_matches_numpy():
  x, mask = sequences(5, (4, 1, 3), 4, 6)
  key = jax.random.key(7)
  weights = np.asarray(layers.random_convex_weights(key, mask))
  z = layers.random_convex_combination(key, x, mask)
  expected = np.zeros((3, 6))
  for b in range(3):
    for s in range(4):
      if mask[b, s]:
        expected[b] += weights[b, s] * x[b, s]
  np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-7)
  # Test time: plain average of the valid vectors.
  mean = layers.random_convex_combination(None, x, mask, deterministic=True)
  np.testing.assert_allclose(
      mean, [xs.mean(0) for xs in ref.unpad(x, mask)], rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="PRNG key"):
    layers.random_convex_combination(None, x, mask)


def numpy_batch_hard(distances, labels, margin):
  per_anchor = []
  for a in range(len(labels)):
    pos = [distances[a, p] for p in range(len(labels))
           if labels[p] == labels[a] and p != a]
    neg = [distances[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
    per_anchor.append(max(0.0, margin + max(pos) - min(neg)))
  return np.mean(per_anchor)


def test_batch_hard_triplet_on_duatm_distances():
  """Eq. 6 with batch-hard mining over a P x V batch of sequences."""
  num_ids, per_id, length, dim = 3, 2, 4, 6
  x, mask = sequences(8, (4, 2, 3, 4, 1, 4), length, dim)
  labels = np.repeat(np.arange(num_ids), per_id)
  model = DualAttention()
  variables = jax.jit(model.init)(jax.random.key(0), x, mask)

  @jax.jit
  def loss_fn(params, x):
    distances, _ = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, x, mask,
        train=True, mutable=["batch_stats"])
    loss, _ = losses.batch_hard_triplet_loss(None, labels, margin=0.2,
                                             distances=distances)
    return loss, distances

  (loss, distances), grads = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(variables["params"], x)
  xs = ref.unpad(x, mask)
  mean, var = ref.batch_statistics(xs, variables["params"])
  expected_distances = ref.distance_matrix(xs, xs, variables["params"], mean,
                                           var)
  # Self-distances are 0 in float64 and ~1e-4 of round-off in the
  # expanded float32 Eq. 4: compared apart; the loss never uses them.
  off_diagonal = ~np.eye(len(labels), dtype=bool)
  np.testing.assert_allclose(distances[off_diagonal],
                             expected_distances[off_diagonal], rtol=1e-5)
  assert np.all(np.diag(distances) < 2e-3)
  assert loss > 0.01  # Not a trivially satisfied batch.
  np.testing.assert_allclose(loss, numpy_batch_hard(expected_distances,
                                                    labels, 0.2), rtol=1e-5)
  for leaf in jax.tree.leaves(grads):
    assert np.all(np.isfinite(leaf))
