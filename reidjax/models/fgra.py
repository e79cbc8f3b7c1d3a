r"""FGRA: the frame-guided region-aligned video model and its objective.

Chen, Zhou, Huang, Zhang, Li, "Frame-Guided Region-Aligned Representation
for Video Person Re-Identification", AAAI 2020, Sec. "Architecture
Overview", "Region Alignment Mechanism", "Feature Aggregation Strategy"
(Eq. 1-9) and "Objective Functions" (Eq. 10-13). Equations -> code ->
tests: ``docs/papers/fgra.md``; the layers: ``reidjax.layers.alignment``.

Input: clips (B, T, H, W, 3). Every frame goes through the backbone
(``model.backbone``: ResNet-50, last stride 1) as one batch of B T images;
its last map gives the frame maps F (B, T, h, w, C).

Global branch (``global_branch``): global average pooling of each frame
(B, T, C), temporal attention over the frames (``TemporalAttentionPool``),
a 1x1 conv C -> ``reduced_features`` (1024): f_{s,g}.

Local branch (``local_branch``):
1. Templates: the clip's first frame is the reference; its map is pooled
   into N_s = ``num_regions`` horizontal stripes (``region_pool``), and
   stripe i goes through its own 1x1 conv C -> C (``template_kernel``
   (R, C, C), ``template_bias`` (R, C)): F_{t,i} (B, R, C).
2. Region features per frame (B, T, R, C): the GAM's aligned F_{n,i}
   (``region_alignment=True``, Eq. 1-2), or each frame's own stripes
   (``False``: no alignment, Table 2's AVG / GB+AVG rows).
3. Temporal aggregation (``temporal_aggregation``): ``"alignment_score"``
   (TAS, Eq. 4-6; needs the alignment), ``"attention"`` (TA: a learned score
   per frame and region, ``TemporalAttentionPool`` shared by the regions)
   or ``"average"`` (AVG): F_{s,i} (B, R, C).
4. Spatial aggregation: ``spatial_attention=True``: Eq. 7-8 and the 1x1
   reduction (``RegionSpatialAttention``); ``False``: the R region vectors
   concatenated (Table 2's AVG baseline: "concatenating these independent
   region representations") and one 1x1 conv R C -> ``reduced_features``.

f_s = [f_{s,g}, f_{s,l}] (Eq. 9; one of them when a branch is off).

Head (the paper is silent on where the classifier sits; as DCANet we take
the strong baseline's, by subclassing ``StrongBaseline``): f_s is the
triplet feature; BNNeck -> bias-free classifier for the softmax loss; the
test embedding is the BNNeck output (``embed_feature="bn"``) or f_s
(``"pre_bn"``); ranking by cosine distance (the ``eval`` section).

Objective (``fgra_objective``, Eq. 13): CE + batch-hard triplet (margin
0.5, Eq. 10) + ``loss.consistency_weight`` (lambda = 5e-4) x L_reg, the
batch mean of Eq. 3's per-clip L_center (Eq. 12), computed on the region
features of step 2. The centres are parameter-free (NOTES.md), so the
paper's learning rate "for parameters in the center loss" has nothing to
act on.

Table 2 as switches (config ``configs/fgra.py`` lists them):
1 AVG = no global branch, no alignment, average, no spatial attention,
weight 0; 2 GB = no local branch; 3 GB+AVG; 4 GB+RAM+AVG; 5 GB+RAM+TA;
6 GB+RAM+TAS; 7 +CR (consistency weight 5e-4); 8 +SA (the full model).
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from reidjax.layers import alignment
from reidjax.models import interface
from reidjax.models.baseline import StrongBaseline, baseline_objective

TEMPORAL_AGGREGATIONS = ("alignment_score", "attention", "average")


class FGRA(StrongBaseline):
  """Global + local (frame-guided, region-aligned) branches + the BNNeck head.

  Attributes (besides ``StrongBaseline``'s; ``video`` must be True):
    num_regions: N_s, horizontal regions of the reference frame.
    reduced_features: width of each branch's 1x1 reduction (1024).
    global_branch, local_branch: which branches make f_s.
    region_alignment: the GAM (Eq. 1-2) on, or plain stripes per frame.
    temporal_aggregation: ``"alignment_score"``, ``"attention"`` or
      ``"average"`` (local branch).
    spatial_attention: Eq. 7-8, or concatenated regions.
    correlation: Eq. 1 as ``"einsum"`` or ``"conv"`` (the grouped convolution;
      same numbers, but XLA:CPU crashed differentiating it at 16,384 groups).
  """

  num_regions: int = 4
  reduced_features: int = 1024
  global_branch: bool = True
  local_branch: bool = True
  region_alignment: bool = True
  temporal_aggregation: str = "alignment_score"
  spatial_attention: bool = True
  correlation: str = "einsum"

  kind: ClassVar[str] = interface.EMBEDDING
  input_fields: ClassVar[tuple[str, ...]] = ("images",)

  def _check_options(self) -> None:
    if not self.video:
      raise ValueError("FGRA is a video model: it needs clips (B, T, H, W, 3) and "
                       "model.video=True (use a video dataset).")
    if not (self.global_branch or self.local_branch):
      raise ValueError("model.global_branch and model.local_branch are both False: "
                       "FGRA needs at least one branch.")
    if self.temporal_aggregation not in TEMPORAL_AGGREGATIONS:
      raise ValueError(f"model.temporal_aggregation must be one of "
                       f"{TEMPORAL_AGGREGATIONS}, got {self.temporal_aggregation!r}.")
    if self.temporal_aggregation == "alignment_score" and not self.region_alignment:
      raise ValueError("model.temporal_aggregation='alignment_score' (TAS) weighs frames by "
                       "the GAM's similarity maps: it needs model.region_alignment=True "
                       "(or choose 'attention' / 'average').")
    if self.correlation not in alignment.CORRELATIONS:
      raise ValueError(f"model.correlation must be one of {alignment.CORRELATIONS}, "
                       f"got {self.correlation!r}.")

  @nn.compact
  def branches(self, inputs: dict[str, jax.Array], train: bool) -> dict[str, Any]:
    """Clips (B, T, H, W, 3) -> f_s (B, D) as ``features`` and the branches'
    intermediates: ``consistency`` (B,), ``frame_weights`` (B, T) (global),
    and for the local branch ``region_features`` (B, T, R, C), ``temporal_weights``
    (B, T, R, C) or (B, T, R), ``region_weights`` (B, R), and with the
    alignment ``maps`` (B, T, R, h, w, C) and ``frame_maps`` (B, T, h, w, C)."""
    self._check_options()
    clips = inputs["images"]
    if clips.ndim != 5:
      raise ValueError(f"FGRA expects clips (B, T, H, W, 3), got shape {clips.shape}.")
    b, t = clips.shape[:2]
    maps = self.backbone(clips.reshape((b * t,) + clips.shape[2:]), train=train)
    frame_maps = maps[self.feature_key].astype(jnp.float32)
    frame_maps = frame_maps.reshape((b, t) + frame_maps.shape[1:])
    dtype = self.backbone.dtype
    out: dict[str, Any] = {}
    parts = []
    if self.global_branch:
      pooled, out["frame_weights"] = alignment.TemporalAttentionPool(
          dtype=dtype, name="global_attention")(jnp.mean(frame_maps, axis=(2, 3)))
      parts.append(nn.Dense(self.reduced_features, dtype=dtype, name="global_reduce")(pooled))
    if self.local_branch:
      parts.append(self._local_branch(frame_maps, train, out))
    else:
      out["consistency"] = jnp.zeros((b,), jnp.float32)
    out["features"] = jnp.concatenate([p.astype(jnp.float32) for p in parts], axis=-1)
    return out

  def _local_branch(self, frame_maps: jax.Array, train: bool, out: dict[str, Any]
                    ) -> jax.Array:
    b, t, _, _, channels = frame_maps.shape
    r = self.num_regions
    if self.region_alignment:
      stripes = alignment.region_pool(frame_maps[:, 0], r)  # reference frame (B, R, C)
      kernel = self.param("template_kernel", nn.initializers.lecun_normal(batch_axis=(0,)),
                          (r, channels, channels))
      bias = self.param("template_bias", nn.initializers.zeros, (r, channels))
      # In the compute dtype, like a dense layer; the correlation reads float32.
      dtype = self.backbone.dtype
      templates = jnp.einsum("brc,rcd->brd", stripes.astype(dtype),
                             kernel.astype(dtype)).astype(jnp.float32) + bias
      gam = alignment.GuideAlignment(correlation=self.correlation, name="gam")(
          templates, frame_maps, train)
      regions = gam["aligned"]
      out.update(maps=gam["maps"], frame_maps=frame_maps)
    else:
      regions = alignment.region_pool(frame_maps, r)  # (B, T, R, C)
    out["region_features"] = regions
    out["consistency"] = alignment.consistency_loss(regions)
    if self.temporal_aggregation == "alignment_score":
      video_regions, out["temporal_weights"] = alignment.temporal_alignment_pool(
          regions, gam["scores"])
    elif self.temporal_aggregation == "attention":
      video_regions, out["temporal_weights"] = alignment.TemporalAttentionPool(
          dtype=self.backbone.dtype, name="local_attention")(regions)
    else:
      video_regions = alignment.temporal_average_pool(regions)
      out["temporal_weights"] = jnp.full((b, t, r), 1.0 / t, jnp.float32)
    if self.spatial_attention:
      local, out["region_weights"] = alignment.RegionSpatialAttention(
          self.reduced_features, dtype=self.backbone.dtype, name="spatial_attention")(
              video_regions, train)
      return local
    out["region_weights"] = jnp.full((b, r), 1.0 / r, jnp.float32)
    return nn.Dense(self.reduced_features, dtype=self.backbone.dtype, name="local_reduce")(
        video_regions.reshape(b, r * channels))

  def pooled(self, inputs: dict[str, jax.Array], train: bool) -> jax.Array:
    """f_s (B, D), which ``StrongBaseline.embed`` passes through the BNNeck."""
    return self.branches(inputs, train)["features"]

  def __call__(self, inputs: dict[str, jax.Array], train: bool = False) -> dict[str, Any]:
    """Clips (B, T, H, W, 3) -> features f_s, embeddings, logits and
    ``consistency`` (B,) (Eq. 3 per clip)."""
    branches = self.branches(inputs, train)
    return {**self.head(branches["features"], train), "consistency": branches["consistency"]}

  def alignment_outputs(self, inputs: dict[str, jax.Array]) -> dict[str, Any]:
    """Inference-mode branch intermediates plus ``responses`` (B, T, R, h, w):
    the channel mean of F_n o M_{n,i}, the region-aligned feature map before
    Eq. 2's spatial mean (the response maps of the paper's Fig. 5)."""
    out = self.branches(inputs, train=False)
    if "maps" in out:
      out["responses"] = jnp.mean(out["frame_maps"][:, :, None] * out["maps"], axis=-1)
    return out


def fgra_objective(outputs: dict[str, Any], batch: dict[str, jax.Array],
                   config: ml_collections.ConfigDict):
  """Eq. 13: CE + batch-hard triplet on f_s + consistency_weight x L_reg.

  Args:
    outputs: ``FGRA.__call__`` outputs.
    batch: must hold ``pids`` (B,).
    config: the ``loss`` section: the baseline's keys (label_smoothing,
      triplet_margin, ce_weight, triplet_weight) and ``consistency_weight``.

  Returns:
    (total loss, dict of scalar metrics), L_reg as ``consistency``.
  """
  total, metrics = baseline_objective(outputs, batch, config)
  consistency = jnp.mean(outputs["consistency"])  # Eq. 12: mean over the P x K clips
  total = total + config.consistency_weight * consistency
  return total, {**metrics, "loss": total, "consistency": consistency}
