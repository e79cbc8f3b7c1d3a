"""DuATM: the Dual ATtention Matching network (Si et al., CVPR 2018).

Equations -> code -> tests, and every reading we take: ``docs/papers/duatm.md``.

Feature sequence extraction (Sec. 3.1, Fig. 3):

- image (B, H, W, 3): the backbone's last feature map (DenseNet-121
  Block-4, 8 x 4 at 256 x 128) read position by position, row-major, as a
  sequence of S = h * w vectors, each through one FC layer to D dimensions;
- video (B, T, H, W, 3): one globally average-pooled backbone vector per
  frame, then a bidirectional LSTM (D/2 units each way, outputs
  concatenated); all T hidden states form the sequence.

Either way every vector is L2-normalised ("each feature vector x^i is
normalized to unit l2 norm before passing it to the next module").

Sequence matching (Sec. 3.2, Eq. 1-5): ``reidjax.layers.DualAttention``.

Training outputs (``__call__``): the all-pairs DuATM distance matrix of the
batch (the batch-hard triplet loss's input, Sec. 3.3), the sequences (the
de-correlation loss, Eq. 7) and ID logits of a random convex combination of
each sequence (Eq. 8; plain averaging at test time).

Readings where the paper is silent:

- The ID classifier (Eq. 8 gives only its input z) is a BatchNorm without
  shift followed by a bias-free linear layer, as in the BNNeck of Luo et al.
  2019; it is used for training only. Why the BatchNorm: z is a convex
  combination of unit vectors, so |z| <= 1 and a plain linear classifier's
  logits stay near zero; its cross-entropy then barely moves from
  ln(#ids) (measured on the synthetic set, 300 ids: 5.70 -> 4.88 in 3000
  steps, test mAP 0.774; with the BatchNorm 5.41 -> 1.23 in 2400 steps, test
  mAP 0.782). ``classifier_bn=False`` gives the plain linear
  layer.
- Video sequences are full length: clips are sampled with circular
  padding, so no position is masked. The (B, S) mask is still carried to
  the matcher and the losses, which handle padded positions.
- Flip test-time augmentation averages the un-normalised sequences of an
  image and of its mirror (the mirror's map columns put back in place,
  ``features(..., mirrored=True)``), then normalises and prepares once.
- The "global" vector that a two-stage ranking sorts by first is the plain
  mean of the sequence x (the test-time pooling of Eq. 8), L2-normalised.
- Ablations (Table 1-2) are ``matching``: ``"full"`` (Eq. 1-5), ``"intra"``
  (intra-sequence refinement, no alignment), ``"inter"`` (alignment, no
  refinement), ``"avepool"`` (neither: Euclidean distance of the averaged
  sequences); see ``reidjax.layers.dual_attention`` for what each computes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from reidjax import losses
from reidjax.layers.dual_attention import (DualAttention, SequenceItems, decorrelation_loss,
                                           random_convex_combination)
from reidjax.models import interface

# model.matching -> (intra, inter) switches of the dual attention block.
MATCHING = {"full": (True, True), "intra": (True, False),
            "inter": (False, True), "avepool": (False, False)}


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


class DuATM(nn.Module):
  """Feature-sequence extractor + dual attention matching (a pair model).

  Attributes:
    backbone: module whose ``__call__(images, train)`` returns a dict of NHWC
      maps; ``feature_key`` is the one read as a sequence.
    num_classes: training identities (the Eq. 8 classifier).
    feature_key: backbone output to use ("block4" for DenseNet-121).
    dim: D, the sequence vectors' dimension (256).
    video: inputs are clips (B, T, H, W, 3); otherwise images (B, H, W, 3).
    matching: ``"full"``, ``"intra"``, ``"inter"`` or ``"avepool"``.
    corruption_probability: p of Eq. 8's random convex combination.
    classifier_bn: BatchNorm (no shift) on z before the ID classifier.
  """

  backbone: nn.Module
  num_classes: int
  feature_key: str = "block4"
  dim: int = 256
  video: bool = False
  matching: str = "full"
  corruption_probability: float = 0.2
  classifier_bn: bool = True

  kind: ClassVar[str] = interface.PAIR
  input_fields: ClassVar[tuple[str, ...]] = ("images",)

  def setup(self):
    if self.matching not in MATCHING:
      raise ValueError(f"model.matching must be one of {sorted(MATCHING)}, got "
                       f"{self.matching!r}.")
    if self.video and self.dim % 2:
      raise ValueError(f"model.dim must be even for the bidirectional LSTM "
                       f"(D/2 units each way), got {self.dim}.")
    intra, inter = MATCHING[self.matching]
    self.matcher = DualAttention(intra=intra, inter=inter, name="matcher")
    if self.video:
      self.temporal = nn.Bidirectional(
          nn.RNN(nn.OptimizedLSTMCell(self.dim // 2)),
          nn.RNN(nn.OptimizedLSTMCell(self.dim // 2)), name="temporal")
    else:
      self.project = nn.Dense(self.dim, name="project")
    if self.classifier_bn:
      self.neck = nn.BatchNorm(use_bias=False, momentum=0.9, epsilon=1e-5, name="neck")
    self.classifier = nn.Dense(self.num_classes, use_bias=False,
                               kernel_init=nn.initializers.normal(1e-3),
                               name="classifier")

  def _raw_sequence(self, images: jax.Array, train: bool, mirrored: bool = False):
    """Images (B, H, W, 3) or clips (B, T, H, W, 3) -> (B, S, D) before the L2
    normalisation; ``mirrored``: put a flipped image's map columns back."""
    if self.video:  # A clip's frames are in time order whether mirrored or not.
      chex.assert_rank(images, 5)
      batch, length = images.shape[:2]
      maps = self.backbone(images.reshape((-1,) + images.shape[2:]),
                           train=train)[self.feature_key]
      frames = jnp.mean(maps.astype(jnp.float32), axis=(1, 2))
      return self.temporal(frames.reshape(batch, length, -1)).astype(jnp.float32)
    chex.assert_rank(images, 4)
    maps = self.backbone(images, train=train)[self.feature_key]
    if mirrored:
      maps = maps[:, :, ::-1, :]
    batch, h, w, c = maps.shape
    return self.project(maps.astype(jnp.float32).reshape(batch, h * w, c))

  def sequence(self, images: jax.Array, train: bool = False):
    """Images (B, H, W, 3) or clips (B, T, H, W, 3) -> (x (B, S, D), mask (B, S))."""
    x = _l2_normalize(self._raw_sequence(images, train))
    return x, jnp.ones(x.shape[:2], bool)

  def __call__(self, inputs: dict[str, jax.Array], train: bool = False) -> dict[str, Any]:
    """Training outputs: distances (B, B), sequence (B, S, D), mask (B, S),
    pooled (B, D) (Eq. 8's z; the plain mean when not training), logits (B, N)."""
    x, mask = self.sequence(inputs["images"], train)
    distances = self.matcher(x, mask, train=train)
    pooled = random_convex_combination(
        self.make_rng("dropout") if train else None, x, mask,
        drop_probability=self.corruption_probability, deterministic=not train)
    if self.classifier_bn:
      pooled_for_id = self.neck(pooled, use_running_average=not train)
    else:
      pooled_for_id = pooled
    return {"distances": distances, "sequence": x, "mask": mask,
            "pooled": pooled, "logits": self.classifier(pooled_for_id)}

  def features(self, inputs: dict[str, jax.Array],
               mirrored: bool = False) -> dict[str, jax.Array]:
    """{"sequence": (B, S, D)}: the sequence before its L2 normalisation, which
    test-time augmentations may average (``mirrored``: flipped inputs)."""
    return {"sequence": self._raw_sequence(inputs["images"], False, mirrored)}

  def prepare(self, features: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-item quantities for ``pair_distance``, plus "global" (B, D).

    The dict holds the ``SequenceItems`` fields (computed once per item:
    the transform filters and the intra-refined sequence) and the
    normalised mean of the sequence for a first-stage ranking.
    """
    x = _l2_normalize(features["sequence"])
    mask = jnp.ones(x.shape[:2], bool)
    items = self.matcher.prepare(x, mask, train=False)
    mean = random_convex_combination(None, x, mask, deterministic=True)
    return {**items._asdict(), "global": _l2_normalize(mean)}

  def embed(self, inputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """``prepare(features(inputs))``: the per-item dict of a tile of items."""
    return self.prepare(self.features(inputs))

  def pair_distance(self, items_a: dict[str, jax.Array],
                    items_b: dict[str, jax.Array]) -> jax.Array:
    """(Na, Nb) DuATM distances of two tiles of ``embed`` outputs (Eq. 4-5)."""
    pick = lambda items: SequenceItems(*(items[f] for f in SequenceItems._fields))
    return self.matcher.pair_distance(pick(items_a), pick(items_b))


def duatm_objective(outputs: dict[str, Any], batch: dict[str, jax.Array],
                    config: ml_collections.ConfigDict):
  """Sec. 3.3: triplet on pair distances + lambda_1 Eq. 7 + lambda_2 Eq. 8 CE.

  Args:
    outputs: ``DuATM.__call__`` outputs.
    batch: must hold ``pids`` (B,).
    config: the ``loss`` section: triplet_margin (0.2), triplet_weight,
      decorrelation_weight (lambda_1 = 0.1), ce_weight (lambda_2 = 0.5),
      label_smoothing (0 in the paper).

  Returns:
    (total loss, dict of scalar metrics).
  """
  pids = batch["pids"]
  triplet, triplet_metrics = losses.batch_hard_triplet_loss(
      None, pids, margin=config.triplet_margin, distances=outputs["distances"])
  decorrelation = decorrelation_loss(outputs["sequence"], outputs["mask"])
  ce, ce_metrics = losses.cross_entropy_with_label_smoothing(
      outputs["logits"], pids, label_smoothing=config.get("label_smoothing", 0.0))
  total = (config.get("triplet_weight", 1.0) * triplet
           + config.decorrelation_weight * decorrelation + config.ce_weight * ce)
  return total, {"loss": total, "triplet": triplet, "decorrelation": decorrelation,
                 "ce": ce, **ce_metrics, **triplet_metrics}
