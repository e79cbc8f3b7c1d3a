"""The strong ReID baseline with a BNNeck.

Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person
Re-identification" (CVPRW 2019), Sec. 3 and Fig. 5: backbone -> global
average pooling -> feature f_t (triplet loss) -> BatchNorm ("BNNeck", its
bias frozen at zero) -> f_i -> bias-free classifier (label-smoothed
cross-entropy). At test time the embedding is f_i (``embed_feature="bn"``,
the paper's choice) or f_t (``"pre_bn"``).

Readings: the BNNeck bias is absent rather than frozen (the same function);
the classifier is initialised N(0, 0.001^2) as in the authors' code.

Video (``video=True``, clips (B, T, H, W, 3)): every frame goes through the
backbone and its pooled vectors are averaged over time ("temporal pooling",
the video baseline of Gao & Nevatia, "Revisiting Temporal Modeling for
Video-based Person ReID", 2018) before the BNNeck.

Center loss (``center_loss=True``; Bag of Tricks Sec. 4.5, Wen et al. 2016):
one learnable centre per identity, a ``centers`` parameter (N, C) returned
with the training outputs; the objective adds ``loss.center_weight`` times
``losses.center_loss`` of f_t (0.0005 in the paper).
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from reidjax import losses
from reidjax.models import interface


class IdentityCenters(nn.Module):
  """The center loss's learnable centres: features (B, C) -> centres (N, C).

  Initialised N(0, 1), as the reference implementation of Wen et al. does.
  """

  num_classes: int

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    return self.param("centers", nn.initializers.normal(1.0),
                      (self.num_classes, features.shape[-1]))


class StrongBaseline(nn.Module):
  """Backbone + global average pooling + BNNeck + ID classifier.

  Attributes:
    backbone: a module whose ``__call__(images, train)`` returns a dict of
      NHWC stage maps; the last one (``feature_key``) is pooled.
    num_classes: number of training identities.
    feature_key: which backbone output to pool.
    embed_feature: ``"bn"`` (after the BNNeck) or ``"pre_bn"``.
    video: inputs are clips (B, T, H, W, 3), pooled over space and time.
    center_loss: add the (N, C) identity centres of the center loss.
  """

  backbone: nn.Module
  num_classes: int
  feature_key: str = "stage4"
  embed_feature: str = "bn"
  video: bool = False
  center_loss: bool = False

  kind: ClassVar[str] = interface.EMBEDDING
  input_fields: ClassVar[tuple[str, ...]] = ("images",)

  def setup(self):
    if self.embed_feature not in ("bn", "pre_bn"):
      raise ValueError("model.embed_feature must be 'bn' or 'pre_bn', got "
                       f"{self.embed_feature!r}.")
    self.neck = nn.BatchNorm(use_bias=False, momentum=0.9, epsilon=1e-5,
                             name="bnneck")
    self.classifier = nn.Dense(
        self.num_classes, use_bias=False,
        kernel_init=nn.initializers.normal(stddev=1e-3), name="classifier")
    if self.center_loss:
      self.centers = IdentityCenters(self.num_classes, name="centers")

  def pooled(self, inputs: dict[str, jax.Array], train: bool) -> jax.Array:
    """f_t (B, C): the pooled backbone features of ``inputs["images"]``.

    A variant that uses more input fields overrides this method.
    """
    images = inputs["images"]
    if self.video:  # (B, T, H, W, 3): frames through the backbone as one batch.
      frames = self._pooled_images(images.reshape((-1,) + images.shape[2:]), train)
      return frames.reshape(images.shape[:2] + frames.shape[1:]).mean(axis=1)
    return self._pooled_images(images, train)

  def _pooled_images(self, images: jax.Array, train: bool) -> jax.Array:
    if images.ndim != 4:
      raise ValueError(f"Expected images (B, H, W, 3){' (frames of clips)' if self.video else ''}"
                       f", got shape {images.shape}; clips need model.video=True.")
    feature_map = self.backbone(images, train=train)[self.feature_key]
    # Pool in float32 even when the backbone computes in bfloat16.
    return jnp.mean(feature_map.astype(jnp.float32), axis=(1, 2))

  def __call__(self, inputs: dict[str, jax.Array], train: bool = False) -> dict[str, Any]:
    """inputs["images"] (B, H, W, 3) or clips (B, T, H, W, 3) -> features (B, C),
    embeddings (B, C), logits (B, N) (and centers (N, C) with the center loss)."""
    return self.head(self.pooled(inputs, train), train)

  def head(self, features: jax.Array, train: bool) -> dict[str, Any]:
    """f_t (B, C) -> the training outputs: features, embeddings (after the
    BNNeck), logits (and the centres with the center loss)."""
    embeddings = self.neck(features, use_running_average=not train)
    outputs = {"features": features, "embeddings": embeddings,
               "logits": self.classifier(embeddings)}
    if self.center_loss:
      outputs["centers"] = self.centers(features)
    return outputs

  def embed(self, inputs: dict[str, jax.Array]) -> jax.Array:
    """inputs["images"] (B, H, W, 3) or clips (B, T, H, W, 3) -> (B, C) test-time
    embeddings."""
    features = self.pooled(inputs, train=False)
    if self.embed_feature == "pre_bn":
      return features
    return self.neck(features, use_running_average=True)


def baseline_objective(outputs: dict[str, Any], batch: dict[str, jax.Array],
                       config: ml_collections.ConfigDict):
  """Label-smoothed CE on the logits + batch-hard triplet on f_t (+ center loss).

  Args:
    outputs: ``StrongBaseline.__call__`` outputs.
    batch: must hold ``pids`` (B,).
    config: the ``loss`` section: label_smoothing, triplet_margin (None for
      soft margin), ce_weight, triplet_weight, and center_weight when the
      model has the center loss.

  Returns:
    (total loss, dict of scalar metrics).
  """
  ce, ce_metrics = losses.cross_entropy_with_label_smoothing(
      outputs["logits"], batch["pids"], label_smoothing=config.label_smoothing)
  triplet, triplet_metrics = losses.batch_hard_triplet_loss(
      outputs["features"], batch["pids"], margin=config.triplet_margin)
  total = config.ce_weight * ce + config.triplet_weight * triplet
  metrics = {"ce": ce, "triplet": triplet, **ce_metrics, **triplet_metrics}
  if "centers" in outputs:
    center, center_metrics = losses.center_loss(outputs["features"], batch["pids"],
                                                outputs["centers"])
    total = total + config.center_weight * center
    metrics.update(center=center, **center_metrics)
  return total, {"loss": total, **metrics}
