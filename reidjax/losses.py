"""Losses shared by the papers.

- ``batch_hard_triplet_loss``: Hermans, Beyer & Leibe, "In Defense of the
  Triplet Loss for Person Re-Identification" (2017), Eq. 5 (batch hard) and
  the soft-margin variant ln(1 + exp(x)) of Sec. 3. Used by the strong
  baseline (Luo et al., "Bag of Tricks", 2019), DCANet, CACE-Net and FGRA.
- ``cross_entropy_with_label_smoothing``: softmax cross-entropy with the
  label-smoothing regulariser of Szegedy et al. (2016), q = (1 - eps) y + eps/N,
  as used by the BNNeck baseline ("Bag of Tricks", Eq. 2).

All losses are means over the (global) batch, so under ``jax.jit`` with a
batch sharded over devices they see every example of every device: the
hardest positive/negative is mined over the whole P x K batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# Squared distances below this are treated as zero before the square root:
# d/dx sqrt(x) is infinite at 0, and an anchor's distance to itself is 0.
_SQRT_EPSILON = 1e-12


def pairwise_euclidean_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  """Euclidean distances between rows, with a finite gradient at zero.

  Args:
    a: (N, D) features.
    b: (M, D) features.

  Returns:
    (N, M) distances ||a_i - b_j||_2, computed in float32 as
    sqrt(max(|a|^2 + |b|^2 - 2 a.b, eps)).
  """
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  squared = (jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :]
             - 2.0 * a @ b.T)
  return jnp.sqrt(jnp.maximum(squared, _SQRT_EPSILON))


def batch_hard_triplet_loss(
    features: jax.Array,
    labels: jax.Array,
    *,
    margin: float | None = 0.3,
    distances: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Batch-hard triplet loss (Hermans et al. 2017, Eq. 5).

  For every anchor a: d_ap = max over same-label samples p != a of d(a, p),
  d_an = min over other-label samples n of d(a, n);
  loss_a = max(0, margin + d_ap - d_an), or ln(1 + exp(d_ap - d_an)) when
  ``margin is None`` (the soft margin). The result is the mean over anchors
  that have at least one positive and one negative in the batch.

  Args:
    features: (B, D) embeddings; ignored when ``distances`` is given.
    labels: (B,) integer identities.
    margin: the margin, or None for the soft-margin formulation.
    distances: optional precomputed (B, B) distance matrix (for pair models
      whose distance is not a Euclidean distance of embeddings).

  Returns:
    (loss, metrics) with metrics ``triplet_accuracy`` (fraction of anchors
    with d_an > d_ap) and the mean hardest distances.
  """
  if distances is None:
    distances = pairwise_euclidean_distance(features, features)
  batch = labels.shape[0]
  same = labels[:, None] == labels[None, :]
  not_self = ~jnp.eye(batch, dtype=bool)
  positive = same & not_self
  negative = ~same
  # -inf / +inf for masked entries so max / min ignore them.
  hardest_positive = jnp.max(jnp.where(positive, distances, -jnp.inf), axis=1)
  hardest_negative = jnp.min(jnp.where(negative, distances, jnp.inf), axis=1)
  valid = positive.any(axis=1) & negative.any(axis=1)
  gap = jnp.where(valid, hardest_positive - hardest_negative, 0.0)
  if margin is None:
    per_anchor = jax.nn.softplus(gap)
  else:
    per_anchor = jax.nn.relu(gap + margin)
  num_valid = jnp.maximum(valid.sum(), 1)
  loss = jnp.sum(jnp.where(valid, per_anchor, 0.0)) / num_valid
  metrics = {
      "triplet_accuracy": jnp.sum(valid & (gap < 0)) / num_valid,
      "hardest_positive": jnp.sum(jnp.where(valid, hardest_positive, 0)) / num_valid,
      "hardest_negative": jnp.sum(jnp.where(valid, hardest_negative, 0)) / num_valid,
  }
  return loss, metrics


def cross_entropy_with_label_smoothing(
    logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean softmax cross-entropy against smoothed one-hot targets.

  Args:
    logits: (B, N) class scores.
    labels: (B,) integer classes in [0, N).
    label_smoothing: eps of q = (1 - eps) one_hot + eps / N.

  Returns:
    (loss, metrics) with the top-1 ``accuracy``.
  """
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(
      jax.nn.one_hot(labels, num_classes, dtype=jnp.float32), label_smoothing)
  loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
  return loss, {"accuracy": accuracy}
