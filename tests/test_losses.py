"""Shared losses against direct NumPy computations of their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reidjax import losses


def _numpy_batch_hard(features, labels, margin):
  """Hermans et al. Eq. 5, one anchor at a time, in float64.

  Returns (loss, metrics) as the JAX loss documents them: means over the
  anchors with at least one positive and one negative.
  """
  features = np.asarray(features, np.float64)
  d = np.sqrt(((features[:, None, :] - features[None, :, :]) ** 2).sum(-1))
  per_anchor, hardest_pos, hardest_neg, correct = [], [], [], []
  for a in range(len(labels)):
    pos = [d[a, p] for p in range(len(labels)) if labels[p] == labels[a] and p != a]
    neg = [d[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
    if not pos or not neg:
      continue
    gap = max(pos) - min(neg)
    per_anchor.append(np.log1p(np.exp(gap)) if margin is None else max(0.0, gap + margin))
    hardest_pos.append(max(pos))
    hardest_neg.append(min(neg))
    correct.append(min(neg) > max(pos))
  metrics = {"hardest_positive": np.mean(hardest_pos),
             "hardest_negative": np.mean(hardest_neg),
             "triplet_accuracy": np.mean(correct)}
  return np.mean(per_anchor), metrics


@pytest.mark.parametrize("margin", [0.3, 1.5, None])
def test_batch_hard_triplet_and_its_metrics_match_numpy(margin):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4), 3)
  # Identity means + noise: half of the anchors are right (below).
  features = (0.8 * rng.normal(size=(4, 5))[labels]
              + 0.5 * rng.normal(size=(12, 5))).astype(np.float32)
  loss, metrics = losses.batch_hard_triplet_loss(jnp.asarray(features), jnp.asarray(labels),
                                                 margin=margin)
  expected_loss, expected = _numpy_batch_hard(features, labels, margin)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  for name in ("hardest_positive", "hardest_negative"):
    np.testing.assert_allclose(metrics[name], expected[name], rtol=1e-5, err_msg=name)
  # A ratio of anchor counts: exact.
  np.testing.assert_allclose(metrics["triplet_accuracy"], expected["triplet_accuracy"],
                             rtol=1e-7)
  # Not a degenerate batch: some anchors right, some wrong.
  assert expected["triplet_accuracy"] == 0.5


def test_batch_hard_triplet_ignores_anchors_without_positive():
  rng = np.random.default_rng(1)
  features = rng.normal(size=(7, 4)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 2, 2, 9])  # id 9 has a single image.
  loss, metrics = losses.batch_hard_triplet_loss(features, labels, margin=0.3)
  expected_loss, expected = _numpy_batch_hard(features, labels, 0.3)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  for name in ("hardest_positive", "hardest_negative"):
    np.testing.assert_allclose(metrics[name], expected[name], rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(metrics["triplet_accuracy"], expected["triplet_accuracy"],
                             rtol=1e-7)


def test_batch_hard_triplet_hand_computed():
  # 1-D features: ids a = {0, 1}, b = {3, 5}. Anchor 0: d_ap 1, d_an 3 -> 0;
  # anchor 1: d_ap 1, d_an 2 -> max(0, 1 - 2 + 1.5) = 0.5; anchor 3: d_ap 2,
  # d_an 2 -> 1.5; anchor 5: d_ap 2, d_an 4 -> 0. Mean = 0.5. d_an > d_ap for
  # anchors 0, 1 and 5 (anchor 3 is a tie): accuracy 3/4. Mean d_ap
  # (1 + 1 + 2 + 2) / 4 = 1.5, mean d_an (3 + 2 + 2 + 4) / 4 = 2.75.
  features = jnp.array([[0.0], [1.0], [3.0], [5.0]])
  labels = jnp.array([0, 0, 1, 1])
  loss, metrics = losses.batch_hard_triplet_loss(features, labels, margin=1.5)
  np.testing.assert_allclose(loss, 0.5, rtol=1e-6)
  np.testing.assert_allclose(metrics["triplet_accuracy"], 0.75)
  np.testing.assert_allclose(metrics["hardest_positive"], 1.5, rtol=1e-6)
  np.testing.assert_allclose(metrics["hardest_negative"], 2.75, rtol=1e-6)
  # Gradient: only anchors 1 and 3 are active, each contributes
  # (d d_ap - d d_an) / 4 with d|u - v|/du = sign(u - v). Anchor 1:
  # (|f1 - f0| - |f1 - f3|) / 4 -> f1 +0.5, f0 -0.25, f3 -0.25 (f3 = 3);
  # anchor 3: (|f3 - f5| - |f3 - f1|) / 4 -> f3 -0.5, f5 +0.25, f1 +0.25.
  grad = jax.grad(lambda f: losses.batch_hard_triplet_loss(f, labels, margin=1.5)[0])(features)
  np.testing.assert_allclose(grad[:, 0], [-0.25, 0.75, -0.75, 0.25], rtol=1e-6)


@pytest.mark.parametrize("margin", [0.3, None])
def test_triplet_gradient_at_identical_features_is_exactly_zero(margin):
  """All features equal: every distance is 0, where d sqrt(s)/ds is infinite.

  The squared distance s_ij = |f_i|^2 + |f_j|^2 - 2 f_i.f_j has gradient
  2 (f_i - f_j) = 0 with respect to f_i and f_j, and the safe square root
  sqrt(max(s, 1e-12)) has finite slope (0: s = 0 is below the clamp). So
  d_ap = d_an = sqrt(1e-12) = 1e-6 for every anchor, the gap is 0, the loss
  is relu(margin) = margin or softplus(0) = ln 2, and d loss / d f is
  exactly 0 (a plain sqrt or norm would give 0 * inf = NaN). Dyadic values
  make s exactly 0 in float32, so the equalities are exact.
  """
  features = jnp.tile(jnp.array([[1.0, -0.5, 2.25]]), (4, 1))
  labels = jnp.array([0, 0, 1, 1])
  fn = lambda f: losses.batch_hard_triplet_loss(f, labels, margin=margin)
  (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(features)
  expected_loss = np.float32(0.3) if margin is not None else np.float32(np.log(2.0))
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-7)
  np.testing.assert_array_equal(grad, np.zeros((4, 3), np.float32))
  np.testing.assert_allclose(metrics["hardest_positive"], 1e-6, rtol=1e-6)
  np.testing.assert_allclose(metrics["hardest_negative"], 1e-6, rtol=1e-6)
  assert metrics["triplet_accuracy"] == 0.0  # a tie is not a success


def test_precomputed_distances_are_used():
  distances = jnp.array([[0.0, 1.0, 4.0], [1.0, 0.0, 2.0], [4.0, 2.0, 0.0]])
  labels = jnp.array([0, 0, 1])
  loss, metrics = losses.batch_hard_triplet_loss(None, labels, margin=0.0, distances=distances)
  # Anchor 0: max(0, 1 - 4); anchor 1: max(0, 1 - 2); anchor 2 has no positive.
  np.testing.assert_allclose(loss, 0.0)
  np.testing.assert_allclose(metrics["hardest_positive"], 1.0)
  np.testing.assert_allclose(metrics["hardest_negative"], 3.0)
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


def _center_batch(seed=3, batch=8, dim=5, num_classes=6):
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(batch, dim)).astype(np.float32)
  centers = rng.normal(size=(num_classes, dim)).astype(np.float32)
  labels = np.array([0, 2, 2, 5, 0, 2, 3, 5])[:batch]  # classes 1 and 4 absent
  return features, labels, centers


def test_center_loss_matches_numpy():
  features, labels, centers = _center_batch()
  loss, metrics = losses.center_loss(features, labels, centers)
  f, c = features.astype(np.float64), centers.astype(np.float64)
  squared = [np.sum((f[j] - c[labels[j]]) ** 2) for j in range(len(labels))]
  # Bag of Tricks' code: the batch mean, no 1/2 (module docstring).
  np.testing.assert_allclose(loss, np.mean(squared), rtol=1e-6)
  np.testing.assert_allclose(metrics["center_distance"], np.mean(np.sqrt(squared)),
                             rtol=1e-6)
  # The same under jit (labels traced).
  jitted, _ = jax.jit(losses.center_loss)(features, labels, centers)
  np.testing.assert_allclose(jitted, np.mean(squared), rtol=1e-6)


def test_center_loss_is_zero_at_the_centers():
  _, labels, centers = _center_batch()
  loss, metrics = losses.center_loss(centers[labels], labels, centers)
  assert float(loss) == 0.0 and float(metrics["center_distance"]) == 0.0


def test_center_loss_gradients_match_closed_form():
  # dL/dc_k = -(2/B) sum_{j: y_j = k} (f_j - c_k); dL/df_j = (2/B)(f_j - c_{y_j}).
  features, labels, centers = _center_batch()
  grad_f, grad_c = jax.grad(lambda f, c: losses.center_loss(f, labels, c)[0],
                            argnums=(0, 1))(features, centers)
  f, c = features.astype(np.float64), centers.astype(np.float64)
  batch = len(labels)
  expected_c = np.zeros_like(c)
  for j, k in enumerate(labels):
    expected_c[k] -= 2.0 / batch * (f[j] - c[k])
  np.testing.assert_allclose(grad_c, expected_c, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(grad_c)[[1, 4]], 0.0)  # absent classes
  np.testing.assert_allclose(grad_f, 2.0 / batch * (f - c[labels]), rtol=1e-5, atol=1e-7)


def test_center_optimizer_is_bag_of_tricks_sgd_step():
  # BoT: total = ... + w * L; centres' grad / w; SGD lr 0.5. One step moves
  # centre k to c_k + (1/B) sum_{j: y_j = k} (f_j - c_k): class 2 (3 of 8
  # samples) goes 3/8 of the way to the mean of its samples.
  features, labels, centers = _center_batch()
  weight = 5e-4
  grad = jax.grad(lambda c: weight * losses.center_loss(features, labels, c)[0])(centers)
  optimizer = losses.center_optimizer(weight)
  updates, _ = optimizer.update(grad, optimizer.init(centers), centers)
  new = np.asarray(optax.apply_updates(centers, updates))
  for k in range(len(centers)):
    members = features[labels == k].astype(np.float64)
    expected = centers[k] + (members - centers[k]).sum(0) / len(labels)
    np.testing.assert_allclose(new[k], expected, rtol=1e-5, atol=1e-6, err_msg=str(k))
  np.testing.assert_allclose(
      new[2], centers[2] + 3 / 8 * (features[labels == 2].mean(0) - centers[2]),
      rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(new[[1, 4]], centers[[1, 4]])


def test_center_loss_bad_input_is_a_clear_error():
  features, labels, centers = _center_batch()
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\).*0\.\.6"):
    losses.center_loss(features, np.where(labels == 5, 6, labels), centers)
  with pytest.raises(ValueError, match=r"\[0, 6\).*-1\.\.5"):
    losses.center_loss(features, np.where(labels == 0, -1, labels), centers)
  with pytest.raises(ValueError, match="dimension 5 but centers 4"):
    losses.center_loss(features, labels, centers[:, :4])
  # Under jit values cannot be checked: a bad label poisons the loss.
  bad = jax.jit(losses.center_loss)(features, np.where(labels == 5, 6, labels), centers)[0]
  assert np.isnan(bad)
  with pytest.raises(ValueError, match="center_weight must be > 0, got 0"):
    losses.center_optimizer(0.0)
