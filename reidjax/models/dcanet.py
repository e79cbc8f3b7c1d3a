"""DCANet: a ResNet with DCAMs between its stages and the BNNeck head.

Hu, Zhou, Huang, "Discriminative Clue Alignment Network for Both Image- and
Video-Based Person Re-Identification", BMVC 2021, Sec. 3 and Fig. 2.
Equations -> code -> tests: ``docs/papers/dcanet.md``; the module itself
(Eq. 1-4) and the discriminant loss (Eq. 5): ``reidjax.layers.dcam``.

The backbone (``model.backbone``: ResNet-50 with the last stride 1, ImageNet
weights from ``model.backbone.pretrained``) is run stage by stage; after
every stage in ``dcam_stages`` (any subset of {2, 3, 4}, default {3}) a
``DCAM`` replaces the stage's output, so it feeds the next stage (after
stage 4 it is the pooled map). The DCAMs are submodules ``dcam_stage{l}``
beside ``backbone``, so torchvision weights load into ``backbone`` unchanged
and a frozen backbone leaves them trainable.

The head is the strong baseline's (``StrongBaseline``, reused by
subclassing): global average pooling -> f_t (triplet loss) -> BNNeck ->
bias-free ID classifier; the embedding is the BNNeck output. The paper says
only "cross entropy and triplet, following previous works". Video (clips
(B, T, H, W, 3)): every frame through the network, frame features averaged
over time, f = 1/T sum_t f_t (Sec. 3), as the baseline does.

Objective (Sec. 3.2, ``dcanet_objective``): the baseline's ID CE (label
smoothing from the config) and batch-hard triplet, plus
``loss.discriminant_weight`` (0.5) times L_dis summed over the DCAMs (over
the frames of the clips for video); weight 0 is Table 3's "BS + DCAM" row.

Ablations: ``dcam_stages`` (Table 1), ``num_blocks`` K for every DCAM or
``num_blocks_per_stage`` one K per entry of ``dcam_stages`` (Table 2; the
paper suggests K might differ by stage), ``attention`` spatial / channel /
both, ``alignment`` stack / max. ``dcam_stages=()`` is the baseline network.
``feature_key`` (from the registry) is not used: the head always pools the
output of stage 4 (or of its DCAM).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections

from reidjax.layers.dcam import DCAM, dcam_discriminant_loss
from reidjax.models import interface
from reidjax.models.baseline import StrongBaseline, baseline_objective

DCAM_STAGES = (2, 3, 4)


class DCANet(StrongBaseline):
  """ResNet stages with DCAMs inserted + the baseline's BNNeck head.

  Attributes (besides ``StrongBaseline``'s):
    dcam_stages: stages followed by a DCAM, a subset of (2, 3, 4).
    num_blocks: K of every DCAM, unless ``num_blocks_per_stage`` is given.
    num_blocks_per_stage: one K per entry of ``dcam_stages`` (empty: all
      ``num_blocks``).
    alignment: ``"stack"`` (Eq. 2 literally) or ``"max"``.
    attention: ``"both"``, ``"spatial"`` or ``"channel"``.
    spatial_reduction, channel_reduction: hidden widths of the attention
      blocks (``DCAM``).
  """

  dcam_stages: Sequence[int] = (3,)
  num_blocks: int = 8
  num_blocks_per_stage: Sequence[int] = ()
  alignment: str = "stack"
  attention: str = "both"
  spatial_reduction: int = 16
  channel_reduction: int = 16

  kind: ClassVar[str] = interface.EMBEDDING
  input_fields: ClassVar[tuple[str, ...]] = ("images",)

  @property
  def blocks_per_stage(self) -> dict[int, int]:
    """{stage: K} of every DCAM, in stage order."""
    stages = tuple(int(s) for s in self.dcam_stages)
    if len(set(stages)) != len(stages) or any(s not in DCAM_STAGES for s in stages):
      raise ValueError(f"model.dcam_stages must be distinct stages of {DCAM_STAGES}, "
                       f"got {tuple(self.dcam_stages)}.")
    per_stage = tuple(self.num_blocks_per_stage)
    if per_stage and len(per_stage) != len(stages):
      raise ValueError(
          f"model.num_blocks_per_stage {per_stage} needs one K per entry of "
          f"model.dcam_stages {stages} (or leave it empty to use num_blocks "
          f"= {self.num_blocks} everywhere).")
    blocks = per_stage or (self.num_blocks,) * len(stages)
    return dict(sorted(zip(stages, (int(k) for k in blocks))))

  def setup(self):
    super().setup()
    if not (callable(getattr(self.backbone, "stem", None))
            and callable(getattr(self.backbone, "stage", None))):
      raise ValueError(
          f"DCANet inserts DCAMs between ResNet stages; its backbone must be a "
          f"ResNet (model.backbone.name 'resnet50' or 'resnet'), got "
          f"{type(self.backbone).__name__}.")
    for stage, k in self.blocks_per_stage.items():
      # setattr names the submodule "dcam_stage{l}" (outside "backbone").
      setattr(self, f"dcam_stage{stage}", DCAM(
          num_blocks=k, stage=stage, alignment=self.alignment,
          attention=self.attention, spatial_reduction=self.spatial_reduction,
          channel_reduction=self.channel_reduction, dtype=self.backbone.dtype))

  def frame_features(self, images: jax.Array, train: bool
                     ) -> tuple[jax.Array, dict[str, dict[str, jax.Array]]]:
    """Images (N, H, W, 3) -> (pooled (N, C) float32, {"stage{l}": DCAM aux}).

    Runs stem, stage 1..4 with each DCAM after its stage (its output feeds
    the next stage); the aux dicts are ``DCAM.__call__``'s, per image.
    """
    if images.ndim != 4:
      raise ValueError(f"Expected images (B, H, W, 3){' (frames of clips)' if self.video else ''}"
                       f", got shape {images.shape}; clips need model.video=True.")
    x = self.backbone.stem(images, train)
    aux = {}
    for index in range(1, 5):
      x = self.backbone.stage(index, x, train)
      if index in self.blocks_per_stage:
        x, aux[f"stage{index}"] = getattr(self, f"dcam_stage{index}")(x, train)
    # Pool in float32 even when the network computes in bfloat16.
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2)), aux

  def pooled_and_aux(self, inputs: dict[str, jax.Array], train: bool):
    """f_t (B, C) and the DCAMs' aux of ``inputs["images"]`` (per frame for clips:
    leading axis B * T, frame t of clip b at b * T + t)."""
    images = inputs["images"]
    if not self.video:
      return self.frame_features(images, train)
    frames, aux = self.frame_features(images.reshape((-1,) + images.shape[2:]), train)
    return frames.reshape(images.shape[:2] + frames.shape[1:]).mean(axis=1), aux

  def pooled(self, inputs: dict[str, jax.Array], train: bool) -> jax.Array:
    """f_t (B, C), which ``StrongBaseline.embed`` normalises with the BNNeck."""
    return self.pooled_and_aux(inputs, train)[0]

  def __call__(self, inputs: dict[str, jax.Array], train: bool = False) -> dict[str, Any]:
    """inputs["images"] (B, H, W, 3) or clips (B, T, H, W, 3) -> the baseline's
    outputs (features, embeddings, logits (, centers)) and ``dcam``: {"stage{l}":
    DCAM aux} (per frame for clips)."""
    features, aux = self.pooled_and_aux(inputs, train)
    return {**self.head(features, train), "dcam": aux}

  def dcam_outputs(self, images: jax.Array) -> dict[str, dict[str, jax.Array]]:
    """Images (N, H, W, 3) (frames, also for a video model) -> {"stage{l}": DCAM
    aux} in inference mode, e.g. the attention maps of Fig. 3."""
    return self.frame_features(images, train=False)[1]


def dcanet_objective(outputs: dict[str, Any], batch: dict[str, jax.Array],
                     config: ml_collections.ConfigDict):
  """The baseline's CE + triplet (+ center) + discriminant_weight x L_dis (Eq. 5).

  Args:
    outputs: ``DCANet.__call__`` outputs.
    batch: must hold ``pids`` (B,).
    config: the ``loss`` section: the baseline's keys and
      ``discriminant_weight`` (0.5 in the paper; 0 turns the loss off).

  Returns:
    (total loss, dict of scalar metrics), L_dis as ``discriminant``.
  """
  total, metrics = baseline_objective(outputs, batch, config)
  discriminant, dis_metrics = dcam_discriminant_loss(outputs["dcam"])
  weight = config.get("discriminant_weight", 0.5)
  if weight:
    total = total + weight * discriminant
  return total, {**metrics, "loss": total, "discriminant": discriminant, **dis_metrics}
