"""Losses against direct NumPy computations of their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reidjax import losses


def _numpy_batch_hard(features, labels, margin):
  """Hermans et al. Eq. 5, one anchor at a time."""
  d = np.sqrt(((features[:, None, :] - features[None, :, :]) ** 2).sum(-1))
  per_anchor = []
  for a in range(len(labels)):
    pos = [d[a, p] for p in range(len(labels)) if labels[p] == labels[a] and p != a]
    neg = [d[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
    if not pos or not neg:
      continue
    gap = max(pos) - min(neg)
    per_anchor.append(np.log1p(np.exp(gap)) if margin is None else max(0.0, gap + margin))
  return np.mean(per_anchor)


@pytest.mark.parametrize("margin", [0.3, 1.5, None])
def test_batch_hard_triplet_matches_numpy(margin):
  rng = np.random.default_rng(0)
  features = rng.normal(size=(12, 5)).astype(np.float32)
  labels = np.repeat(np.arange(4), 3)
  loss, metrics = losses.batch_hard_triplet_loss(jnp.asarray(features), jnp.asarray(labels),
                                                 margin=margin)
  np.testing.assert_allclose(loss, _numpy_batch_hard(features, labels, margin), rtol=1e-5)
  assert 0.0 <= metrics["triplet_accuracy"] <= 1.0


def test_batch_hard_triplet_ignores_anchors_without_positive():
  rng = np.random.default_rng(1)
  features = rng.normal(size=(7, 4)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 2, 2, 9])  # id 9 has a single image.
  loss, _ = losses.batch_hard_triplet_loss(features, labels, margin=0.3)
  np.testing.assert_allclose(loss, _numpy_batch_hard(features, labels, 0.3), rtol=1e-5)


def test_batch_hard_triplet_hand_computed():
  # 1-D features: ids a = {0, 1}, b = {3, 5}. Anchor 0: d_ap 1, d_an 3 -> 0;
  # anchor 1: d_ap 1, d_an 2 -> max(0, 1 - 2 + 1.5) = 0.5; anchor 3: d_ap 2,
  # d_an 2 -> 1.5; anchor 5: d_ap 2, d_an 4 -> 0. Mean = 0.5. d_an > d_ap for
  # anchors 0, 1 and 5 (anchor 3 is a tie): accuracy 3/4.
  features = jnp.array([[0.0], [1.0], [3.0], [5.0]])
  loss, metrics = losses.batch_hard_triplet_loss(features, jnp.array([0, 0, 1, 1]), margin=1.5)
  np.testing.assert_allclose(loss, 0.5, rtol=1e-6)
  np.testing.assert_allclose(metrics["triplet_accuracy"], 0.75)


def test_triplet_gradient_finite_for_identical_features():
  # Duplicate rows give zero distances, where d sqrt(x)/dx is infinite.
  features = jnp.ones((4, 3))
  grad = jax.grad(lambda f: losses.batch_hard_triplet_loss(f, jnp.array([0, 0, 1, 1]))[0])(features)
  assert np.all(np.isfinite(grad))


def test_precomputed_distances_are_used():
  distances = jnp.array([[0.0, 1.0, 4.0], [1.0, 0.0, 2.0], [4.0, 2.0, 0.0]])
  labels = jnp.array([0, 0, 1])
  loss, _ = losses.batch_hard_triplet_loss(None, labels, margin=0.0, distances=distances)
  # Anchor 0: max(0, 1 - 4); anchor 1: max(0, 1 - 2); anchor 2 has no positive.
  np.testing.assert_allclose(loss, 0.0)
  loss, _ = losses.batch_hard_triplet_loss(None, labels, margin=3.5, distances=distances)
  np.testing.assert_allclose(loss, ((1 - 4 + 3.5) + (1 - 2 + 3.5)) / 2, rtol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_with_label_smoothing(eps):
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(6, 5)).astype(np.float32)
  labels = np.array([0, 4, 2, 2, 1, 3])
  loss, metrics = losses.cross_entropy_with_label_smoothing(logits, labels, label_smoothing=eps)
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  q = np.full((6, 5), eps / 5) + (1 - eps) * np.eye(5)[labels]
  np.testing.assert_allclose(loss, -(q * log_p).sum(1).mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], np.mean(logits.argmax(1) == labels))
