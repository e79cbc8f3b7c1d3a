"""Losses shared by the papers.

- ``batch_hard_triplet_loss``: Hermans, Beyer & Leibe, "In Defense of the
  Triplet Loss for Person Re-Identification" (2017), Eq. 5 (batch hard) and
  the soft-margin variant ln(1 + exp(x)) of Sec. 3. Used by the strong
  baseline (Luo et al., "Bag of Tricks", 2019), DCANet, CACE-Net and FGRA.
- ``cross_entropy_with_label_smoothing``: softmax cross-entropy with the
  label-smoothing regulariser of Szegedy et al. (2016), q = (1 - eps) y + eps/N,
  as used by the BNNeck baseline ("Bag of Tricks", Eq. 2).
- DuATM (Si et al., "Dual Attention Matching Network for Context-Aware
  Feature Sequence based Person Re-Identification", CVPR 2018, Sec. 3.3):
  ``decorrelation_loss`` (Eq. 7) and ``random_convex_combination`` (the
  pooling of Eq. 8, whose cross-entropy is
  ``cross_entropy_with_label_smoothing``). Its triplet loss (Eq. 6, margin
  0.2, batch-hard over the P x V batch) is ``batch_hard_triplet_loss(None,
  labels, margin=0.2, distances=DualAttention()(sequences, mask, train=True))``.

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


def decorrelation_loss(sequences: jax.Array,
                       mask: jax.Array | None = None) -> jax.Array:
  """DuATM's de-correlation loss (Eq. 7), averaged over the batch.

  Per sequence, with X the D x N matrix of its N valid feature vectors:
  (1/N^2) ||I - X^T X||_F^2. Readings: N is the number of *valid* positions
  (padding of variable-length video sequences is dropped from X, so it
  neither adds rows/columns to X^T X nor counts in N); the loss is applied to
  the sequence as the matching module receives it (L2-normalised vectors,
  whose X^T X has a unit diagonal, so the loss penalises the cosines between
  positions).

  Args:
    sequences: (B, S, D) feature sequences.
    mask: optional (B, S) bool, True at valid positions.

  Returns:
    Scalar loss.
  """
  sequences = sequences.astype(jnp.float32)
  batch, length, _ = sequences.shape
  if mask is None:
    mask = jnp.ones((batch, length), bool)
  mask = mask.astype(bool)
  # where, not a product: padded entries may hold NaN or inf.
  sequences = jnp.where(mask[:, :, None], sequences, 0.0)
  gram = jnp.einsum("bsd,btd->bst", sequences, sequences,
                    precision=jax.lax.Precision.HIGHEST)  # X^T X, (B, S, S)
  pair_mask = mask[:, :, None] & mask[:, None, :]
  identity = jnp.eye(length, dtype=jnp.float32)[None]
  residual = jnp.where(pair_mask, identity - gram, 0.0)
  num_valid = jnp.maximum(mask.sum(axis=1), 1).astype(jnp.float32)
  per_sequence = jnp.sum(residual * residual, axis=(1, 2)) / num_valid ** 2
  return per_sequence.mean()


def random_convex_weights(key: jax.Array, mask: jax.Array, *,
                          drop_probability: float = 0.2) -> jax.Array:
  """Random convex-combination weights of DuATM's Eq. 8 augmentation.

  Each valid position gets w_i ~ U[0, 1), reset to 0 with probability
  ``drop_probability``; the weights are renormalised to sum to 1. Padded
  positions get 0. Reading of the degenerate case: when every valid weight
  of a sequence was reset (probability p^S), it falls back to uniform
  weights over the valid positions, i.e. plain averaging, the test-time
  pooling.

  Args:
    key: PRNG key.
    mask: (B, S) bool, True at valid positions.
    drop_probability: p, the probability of resetting a weight to 0.

  Returns:
    (B, S) float32 weights, >= 0, summing to 1 over each row's valid entries.
  """
  if not 0.0 <= drop_probability <= 1.0:
    raise ValueError("drop_probability must be in [0, 1], got "
                     f"{drop_probability}.")
  mask = mask.astype(bool)
  uniform_key, drop_key = jax.random.split(key)
  weights = jax.random.uniform(uniform_key, mask.shape, jnp.float32)
  keep = jax.random.bernoulli(drop_key, 1.0 - drop_probability, mask.shape)
  weights = jnp.where(keep & mask, weights, 0.0)
  total = weights.sum(axis=1, keepdims=True)
  average = mask / jnp.maximum(mask.sum(axis=1, keepdims=True), 1)
  degenerate = total <= 0.0
  return jnp.where(degenerate, average,
                   weights / jnp.where(degenerate, 1.0, total))


def random_convex_combination(key: jax.Array | None, features: jax.Array,
                              mask: jax.Array | None = None, *,
                              drop_probability: float = 0.2,
                              deterministic: bool = False) -> jax.Array:
  """z = sum_i w_i x_i with ``random_convex_weights`` (DuATM Eq. 8).

  Args:
    key: PRNG key (unused, may be None, when ``deterministic``).
    features: (B, S, D) feature sequences.
    mask: optional (B, S) bool, True at valid positions.
    drop_probability: p of ``random_convex_weights``.
    deterministic: plain average over the valid positions (test time).

  Returns:
    (B, D) pooled features, to feed the ID classifier.
  """
  features = features.astype(jnp.float32)
  batch, length, _ = features.shape
  if mask is None:
    mask = jnp.ones((batch, length), bool)
  mask = mask.astype(bool)
  if deterministic:
    weights = mask / jnp.maximum(mask.sum(axis=1, keepdims=True), 1)
  else:
    if key is None:
      raise ValueError("random_convex_combination needs a PRNG key unless "
                       "deterministic=True.")
    weights = random_convex_weights(key, mask,
                                    drop_probability=drop_probability)
  features = jnp.where(mask[:, :, None], features, 0.0)
  return jnp.einsum("bs,bsd->bd", weights.astype(jnp.float32), features,
                    precision=jax.lax.Precision.HIGHEST)
