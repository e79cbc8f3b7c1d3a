"""Losses shared by the papers (a paper's own losses live beside its layer).

- ``batch_hard_triplet_loss``: Hermans, Beyer & Leibe, "In Defense of the
  Triplet Loss for Person Re-Identification" (2017), Eq. 5 (batch hard) and
  the soft-margin variant ln(1 + exp(x)) of Sec. 3. Used by the strong
  baseline (Luo et al., "Bag of Tricks", 2019), DuATM (its Eq. 6, on the
  matrix of ``reidjax.layers.DualAttention`` distances), DCANet, CACE-Net
  and FGRA.
- ``cross_entropy_with_label_smoothing``: softmax cross-entropy with the
  label-smoothing regulariser of Szegedy et al. (2016), q = (1 - eps) y + eps/N,
  as used by the BNNeck baseline ("Bag of Tricks", Eq. 2).
- ``center_loss`` and ``center_optimizer``: the center loss of Wen et al.,
  "A Discriminative Feature Learning Approach for Deep Face Recognition"
  (ECCV 2016), as "Bag of Tricks" (Sec. 4.5, Eq. 6, weight 5e-4) trains it.

All losses are means over the (global) batch, so under ``jax.jit`` with a
batch sharded over devices they see every example of every device: the
hardest positive/negative is mined over the whole P x K batch.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
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


def center_loss(
    features: jax.Array, labels: jax.Array, centers: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Center loss, mean over the batch of ||f_j - c_{y_j}||^2.

  Wen et al. (2016, Eq. 2) and "Bag of Tricks" (Eq. 6) write
  L_C = 1/2 sum_{j=1}^{B} ||f_j - c_{y_j}||_2^2. Reading: we follow the Bag
  of Tricks authors' code instead (reid-strong-baseline,
  layers/center_loss.py, read for this fact only): it takes the squared
  distance of each sample to its own class centre and returns their *mean*
  over the batch, without the 1/2, i.e. (1/B) sum_j ||f_j - c_{y_j}||^2 =
  (2/B) x the written L_C. Its weight 5e-4 was tuned with that scale, so
  ``loss.center_weight = 5e-4`` here means what it means there. (Their code
  expands |f|^2 + |c|^2 - 2 f.c and clamps it to [1e-12, 1e12]; the direct
  sum of squared differences below needs neither: it has no cancellation
  and no square root.) BoT applies it to f_t, the feature before the BNNeck
  (the triplet loss's input), with centres initialised N(0, 1).

  Gradients: dL/df_j = (2/B)(f_j - c_{y_j}) and
  dL/dc_k = -(2/B) sum_{j: y_j = k} (f_j - c_k); centres of classes absent
  from the batch get 0.

  Updating the centres: BoT does not step them with the network's
  optimizer. The total loss holds center_weight x L; after the backward
  pass it divides the centres' gradient by center_weight (so the centres see
  the gradient of the unweighted L) and steps them with a separate plain SGD
  at lr 0.5 (no momentum, weight decay or schedule). ``center_optimizer``
  is that update as one optax transformation, for the centres' leaf in an
  ``optax.multi_transform``. The alternative, putting the centres in the
  main optimizer (Adam 3.5e-4 with weight decay), moves each coordinate by
  at most ~lr per step, so centres starting at N(0, 1) would lag the
  features by thousands of steps, and the decay pulls them to 0.

  Args:
    features: (B, D) features f.
    labels: (B,) integer classes in [0, C).
    centers: (C, D) the learnable centres c (a model parameter).

  Returns:
    (loss, metrics) with ``center_distance``, the mean ||f_j - c_{y_j}||_2.
    A label outside [0, C) makes the loss NaN (under ``jax.jit`` values
    cannot be checked; called eagerly it is a ValueError).
  """
  chex.assert_rank([features, labels, centers], [2, 1, 2])
  chex.assert_equal_shape_prefix([features, labels], 1)
  if features.shape[1] != centers.shape[1]:
    raise ValueError(f"center_loss: features have dimension {features.shape[1]} "
                     f"but centers {centers.shape[1]}; give one centre per class "
                     "of the feature's dimension.")
  num_classes = centers.shape[0]
  if not isinstance(labels, jax.core.Tracer):
    concrete = np.asarray(labels)
    if concrete.size and (concrete.min() < 0 or concrete.max() >= num_classes):
      raise ValueError(f"center_loss: labels must lie in [0, {num_classes}) "
                       f"(one centre per class), got {concrete.min()}.."
                       f"{concrete.max()}.")
  in_range = (labels >= 0) & (labels < num_classes)
  own_centers = jnp.take(centers.astype(jnp.float32),
                         jnp.clip(labels, 0, num_classes - 1), axis=0)
  own_centers = jnp.where(in_range[:, None], own_centers, jnp.nan)
  squared = jnp.sum(jnp.square(features.astype(jnp.float32) - own_centers),
                    axis=1)
  loss = squared.mean()
  distance = jnp.sqrt(jax.lax.stop_gradient(squared)).mean()
  return loss, {"center_distance": distance}


def center_optimizer(center_weight: float,
                     learning_rate: float = 0.5) -> optax.GradientTransformation:
  """Bag of Tricks' update of the center-loss centres, as optax.

  Given the centres' gradient of the *total* loss (which holds
  ``center_weight`` x ``center_loss``), BoT rescales it by 1/center_weight
  and takes a plain SGD step of ``learning_rate`` (0.5 in its recipe):
  c <- c - (learning_rate / center_weight) g. One step moves centre k to
  c_k + (learning_rate * 2 / B) sum_{j: y_j = k} (f_j - c_k), i.e. with
  lr 0.5, K of the B samples of class k pull it K/B of the way to their
  mean. Give it the centres' leaf in an ``optax.multi_transform`` (no
  weight decay, momentum or learning-rate schedule on it).

  Args:
    center_weight: the center loss's weight in the total loss (> 0).
    learning_rate: the centres' own SGD learning rate.
  """
  if not center_weight > 0:
    raise ValueError(f"center_optimizer: center_weight must be > 0, got "
                     f"{center_weight}; with no center loss leave the "
                     "centres out of the model.")
  if not learning_rate > 0:
    raise ValueError(f"center_optimizer: learning_rate must be > 0, got "
                     f"{learning_rate}.")
  return optax.sgd(learning_rate / center_weight)
