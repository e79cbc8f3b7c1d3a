r"""FGRA's alignment and aggregation layers.

Chen, Zhou, Huang, Zhang, Li, "Frame-Guided Region-Aligned Representation
for Video Person Re-Identification", AAAI 2020, Sec. "Region Alignment
Mechanism" (Eq. 1-3) and "Feature Aggregation Strategy" (Eq. 4-8).
Equation -> code -> test map: ``docs/papers/fgra.md``. NHWC throughout: a
clip's frame maps are (B, T, H, W, C) (the paper's N frames of C x H x W),
templates (B, R, C) with R = N_s regions.

- ``depthwise_cross_correlation`` (Eq. 1): M_{n,i} = F_{t,i} * F_n, the
  depth-wise cross-correlation of SiamRPN++ with a 1 x 1 template, i.e.
  M_{n,i}(h, w, c) = F_{t,i}(c) F_n(h, w, c). Two forms, tested equal:
  ``"conv"`` a grouped convolution (``jax.lax.conv_general_dilated`` with
  ``feature_group_count``; the clips are folded into the groups, so one
  convolution runs every clip with its own kernels) and ``"einsum"`` (a
  broadcast product, the default: XLA:CPU crashed differentiating the
  grouped convolution with B x C = 16,384 groups). -> (B, T, R, H, W, C).
- ``region_pool``: a map (..., H, W, C) -> N_s horizontal stripes, each
  average-pooled to a vector (..., R, C). Stripe i covers rows
  [floor(i H / R), ceil((i + 1) H / R)), adaptive average pooling's
  bounds, so R need not divide H.
- ``GuideAlignment`` (Eq. 1-2, the GAM): M -> BatchNorm -> sigmoid, then
  F_{n,i} = mean_{h,w} F_n o M_{n,i} (B, T, R, C); it also returns the
  normalised maps and their spatial means s_{n,i} (Eq. 5).
- ``temporal_alignment_pool`` (Eq. 4-6): s^_{n,i} = softmax over the
  frames n of s_{n,i}, per channel; F_{s,i} = sum_n F_{n,i} o s^_{n,i}.
- ``consistency_loss`` (Eq. 3): sum_i sum_n ||F_{n,i} - c_i||^2 per clip.
- ``RegionSpatialAttention`` (Eq. 7-8): F_s = [F_{s,1} .. F_{s,R}];
  g = Conv1d over the regions (kernel 3, C -> 1, zero "same" padding) +
  BatchNorm + ReLU; W = softmax_i g(F_s); F_{s,l} = sum_i W_i F_{s,i};
  then a 1x1 conv (a Dense on a vector) to ``features`` (1024).
- ``TemporalAttentionPool``: the global branch's temporal attention (Li et
  al. 2018b, which FGRA cites): one learned score per frame (a 1x1 conv of
  the frame's pooled vector to one channel), softmax over the frames,
  weighted sum. ``features`` (B, T, D) -> (B, D).

Readings (see also ``shared/papers/NOTES.md``):
- The templates are vectors (pooled stripes), so Eq. 1's "group
  convolution" is a 1 x 1 kernel per channel: a channel-wise product.
- One BatchNorm over C channels normalises every region's maps (statistics
  over clips, frames, regions and positions), as a BatchNorm2d(C) applied
  to the stacked maps would.
- Eq. 3's centre c_i is parameter-free: the mean of F_{n,i} over the
  clip's frames (the equation's words), not a learned centre per identity.
- Frame masks (optional, (B, T) bool, True = a real frame): masked frames
  get zero temporal weight and are left out of the consistency centre and
  sum. The video pipeline pads short tracklets circularly (repeated frames,
  no mask), so the model never passes a mask; a clip of T copies of one
  frame gives uniform weights 1/T and the single frame's features.
- Softmaxes, means and the product F_n o M_{n,i} run in float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

CORRELATIONS = ("conv", "einsum")


def _check_templates(templates: jax.Array, frame_maps: jax.Array) -> None:
  if frame_maps.ndim != 5 or templates.ndim != 3:
    raise ValueError(f"Expected frame maps (B, T, H, W, C) and templates (B, R, C), got "
                     f"{frame_maps.shape} and {templates.shape}.")
  if (templates.shape[0], templates.shape[-1]) != (frame_maps.shape[0], frame_maps.shape[-1]):
    raise ValueError(f"Templates {templates.shape} and frame maps {frame_maps.shape} must "
                     "agree on the clips B and the channels C.")


def depthwise_cross_correlation(templates: jax.Array, frame_maps: jax.Array,
                                method: str = "einsum") -> jax.Array:
  """Eq. 1: M_{n,i}(h, w, c) = F_{t,i}(c) F_n(h, w, c).

  Args:
    templates: (B, R, C) template vectors F_{t,i} of each clip.
    frame_maps: (B, T, H, W, C) frame maps F_n.
    method: ``"einsum"`` or ``"conv"`` (grouped convolution, the paper's
      form).

  Returns:
    (B, T, R, H, W, C) similarity maps M (before the BatchNorm).
  """
  _check_templates(templates, frame_maps)
  if method == "einsum":
    return jnp.einsum("brc,bthwc->btrhwc", templates, frame_maps)
  if method != "conv":
    raise ValueError(f"method must be one of {CORRELATIONS}, got {method!r}.")
  b, t, h, w, c = frame_maps.shape
  r = templates.shape[1]
  # Groups = (clip, channel): input channel g = b * C + c of a (T, H, W, B*C)
  # map; group g's R output channels come from its 1 x 1 kernels F_{t,i}(c).
  lhs = jnp.transpose(frame_maps, (1, 2, 3, 0, 4)).reshape(t, h, w, b * c)
  rhs = jnp.transpose(templates, (0, 2, 1)).reshape(1, 1, 1, b * c * r)
  out = jax.lax.conv_general_dilated(
      lhs, rhs.astype(lhs.dtype), window_strides=(1, 1), padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=b * c)
  # Output channel (b * C + c) * R + i -> (B, T, R, H, W, C).
  return jnp.transpose(out.reshape(t, h, w, b, c, r), (3, 0, 5, 1, 2, 4))


def region_bounds(height: int, num_regions: int) -> list[tuple[int, int]]:
  """Row ranges [start, end) of the ``num_regions`` horizontal stripes."""
  if not 1 <= num_regions <= height:
    raise ValueError(f"num_regions (N_s) must be in [1, {height}] for a map {height} rows "
                     f"high, got {num_regions}; use fewer regions or larger inputs.")
  return [(i * height // num_regions, -(-(i + 1) * height // num_regions))
          for i in range(num_regions)]


def region_pool(feature_map: jax.Array, num_regions: int) -> jax.Array:
  """(..., H, W, C) -> (..., R, C): each horizontal stripe's average vector."""
  stripes = [jnp.mean(feature_map[..., start:end, :, :], axis=(-3, -2))
             for start, end in region_bounds(feature_map.shape[-3], num_regions)]
  return jnp.stack(stripes, axis=-2)


def masked_softmax(scores: jax.Array, mask: jax.Array | None, axis: int) -> jax.Array:
  """Softmax of ``scores`` along ``axis``; entries where ``mask`` is False get 0."""
  scores = scores.astype(jnp.float32)
  if mask is None:
    return jax.nn.softmax(scores, axis=axis)
  return jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=axis, where=mask)


def _frame_mask(mask: jax.Array | None, ndim: int) -> jax.Array | None:
  """(B, T) bool -> broadcastable to (B, T, ...) of ``ndim`` axes."""
  if mask is None:
    return None
  return jnp.asarray(mask, bool).reshape(mask.shape + (1,) * (ndim - 2))


class GuideAlignment(nn.Module):
  """The guide alignment module (Eq. 1-2), parameter-free but for a BatchNorm.

  Attributes:
    correlation: ``"einsum"`` or ``"conv"``, the form of Eq. 1.
    momentum, epsilon: the BatchNorm's (PyTorch's 0.1 momentum is 0.9 here).
  """

  correlation: str = "einsum"
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, templates: jax.Array, frame_maps: jax.Array, train: bool
               ) -> dict[str, jax.Array]:
    """templates (B, R, C), frame maps (B, T, H, W, C) -> dict of

    ``aligned`` (B, T, R, C): F_{n,i} (Eq. 2);
    ``maps`` (B, T, R, H, W, C): sigmoid(BN(M_{n,i})), in (0, 1);
    ``scores`` (B, T, R, C): s_{n,i} = mean_{h,w} of the maps (Eq. 5).
    """
    frame_maps = frame_maps.astype(jnp.float32)
    similarity = depthwise_cross_correlation(templates.astype(jnp.float32), frame_maps,
                                             self.correlation)
    normalised = nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                              epsilon=self.epsilon, name="bn")(similarity)
    maps = jax.nn.sigmoid(normalised)
    aligned = jnp.mean(frame_maps[:, :, None] * maps, axis=(3, 4))
    return {"aligned": aligned, "maps": maps, "scores": jnp.mean(maps, axis=(3, 4))}


def temporal_alignment_pool(aligned: jax.Array, scores: jax.Array,
                            mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Eq. 4 and 6: F_{s,i} = sum_n F_{n,i} o softmax_n(s_{n,i}).

  Args:
    aligned: (B, T, R, C) region-aligned features F_{n,i}.
    scores: (B, T, R, C) s_{n,i} (Eq. 5).
    mask: optional (B, T) bool, False for frames to leave out.

  Returns:
    ((B, R, C) region video features F_{s,i}, (B, T, R, C) weights s^_{n,i}).
  """
  weights = masked_softmax(scores, _frame_mask(mask, scores.ndim), axis=1)
  return jnp.sum(aligned.astype(jnp.float32) * weights, axis=1), weights


def temporal_average_pool(features: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """(B, T, ...) -> (B, ...): the mean over the (unmasked) frames (Table 2's AVG)."""
  features = features.astype(jnp.float32)
  if mask is None:
    return jnp.mean(features, axis=1)
  m = _frame_mask(mask, features.ndim).astype(jnp.float32)
  return jnp.sum(features * m, axis=1) / jnp.sum(m, axis=1)


def consistency_loss(aligned: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Eq. 3 per clip: sum_i sum_n ||F_{n,i} - c_i||_2^2, c_i = mean_n F_{n,i}.

  Args:
    aligned: (B, T, R, C) region-aligned features.
    mask: optional (B, T) bool; masked frames are out of the centre and the sum.

  Returns:
    (B,) L_center of each clip (Eq. 12 averages it over the batch).
  """
  aligned = aligned.astype(jnp.float32)
  centres = temporal_average_pool(aligned, mask)[:, None]
  squared = jnp.sum((aligned - centres) ** 2, axis=-1)  # (B, T, R)
  if mask is not None:
    squared = squared * jnp.asarray(mask, jnp.float32)[:, :, None]
  return jnp.sum(squared, axis=(1, 2))


class TemporalAttentionPool(nn.Module):
  """Temporal attention: score_n = w . f_n + b, a = softmax_n(score), sum_n a_n f_n.

  ``features`` (B, T, D) (or (B, T, ..., D): one score per frame and per
  leading index, e.g. per region) -> ((B, ..., D), weights (B, T, ...)).
  """

  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, mask: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
    scores = nn.Dense(1, dtype=self.dtype, name="score")(features)[..., 0]
    weights = masked_softmax(scores, _frame_mask(mask, scores.ndim), axis=1)
    pooled = jnp.sum(features.astype(jnp.float32) * weights[..., None], axis=1)
    return pooled, weights


class RegionSpatialAttention(nn.Module):
  """Eq. 7-8: attention over the R region features, then a 1x1 reduction.

  Attributes:
    features: the reduced width (1024 in the paper).
    kernel_size: the Conv1d's kernel along the regions (3).
  """

  features: int
  kernel_size: int = 3
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, region_features: jax.Array, train: bool
               ) -> tuple[jax.Array, jax.Array]:
    """(B, R, C) region video features F_s -> ((B, features) f_{s,l}, (B, R) W)."""
    scores = nn.Conv(1, (self.kernel_size,), padding="SAME", dtype=self.dtype,
                     name="conv")(region_features)
    scores = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          name="bn")(scores)
    weights = jax.nn.softmax(nn.relu(scores[..., 0]).astype(jnp.float32), axis=-1)
    local = jnp.einsum("br,brc->bc", weights, region_features.astype(jnp.float32))
    return nn.Dense(self.features, dtype=self.dtype, name="reduce")(local), weights


__all__ = ["CORRELATIONS", "GuideAlignment", "RegionSpatialAttention",
           "TemporalAttentionPool", "consistency_loss", "depthwise_cross_correlation",
           "masked_softmax", "region_bounds", "region_pool", "temporal_alignment_pool",
           "temporal_average_pool"]
