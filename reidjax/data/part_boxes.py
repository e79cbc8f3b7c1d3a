"""Body-part boxes from pose keypoints (Attention-Driven ReID, Eq. 1-2).

Yang, Yan, Lu et al., "Attention driven person re-identification", Pattern
Recognition 2019, Sec. 3.2. From the 18 joints K_j = (x_j, y_j) of an image
(COCO-18 order, ``reidjax.data.keypoints``) and five joint sets P0..P4
(whole body, head, upper body, upper legs, lower legs):

Eq. 1  top    = 2 min_{P1} y - max_{P1} y          (head top)
       bottom = 4/3 max_{P4} y - 1/3 min_{P4} y     (soles)
       H      = bottom - top                        (body height)
       (x_c, y_c) = mean over P0 of (x_j, y_j)
       x_l = min(x_c - H/4, min_{P0} x),  x_r = max(x_c + H/4, max_{P0} x)
Eq. 2  R0 = (x_l, top, x_r, bottom)
       R1 = (x_l, top, x_r, max_{P1} y + beta)
       Ri = (x_l, min_{Pi} y - beta, x_r, max_{Pi} y + beta),  i = 2, 3
       R4 = (x_l, min_{P4} y - beta, x_r, bottom)

Boxes are (x1, y1, x2, y2) in continuous pixel coordinates of the image the
keypoints belong to (top-left corner (0, 0)); they may reach outside it.

Readings (NOTES.md, "Attention-Driven ReID"):
* The printed joint sets are garbled; the sets are config
  (``data.parts.joint_sets``): P1 head = nose, eyes, ears; P2 upper body =
  neck, shoulders, elbows, wrists; P3 upper legs = hips, knees; P4 lower
  legs = knees, ankles; P0 = all 18.
* beta is a fraction of H (``data.parts.beta``): 3/48 (Table 11's best) by
  default; the text's H/10 is 0.1.
* Missing joints (confidence 0) and joints below ``min_confidence`` are
  filled from ``CANONICAL_POSES`` (a few standing / walking poses, closed
  under mirroring): each pose is aligned to the confident joints by a
  least-squares scale + translation, and the missing joints are the average
  of the aligned poses weighted by softmax(-e_k / FIT_TEMPERATURE), e_k the
  pose's RMS fitting error in units of its fitted stature. Soft weights
  rather than the single best pose keep the boxes exactly mirror-equivariant
  when two mirrored poses fit equally well (the mirror of an image gets the
  mirror of its boxes, which flip test-time augmentation relies on).
* Fewer than 2 confident joints (no scale), no pose with a positive scale,
  or a body height below MIN_BODY_HEIGHT of the image height: the four fixed
  horizontal stripes (the paper's baseline, Table 6), each one quarter of the
  image extended by beta x image height into its neighbours (clipped to the
  image), with R0 the whole image. ``source="stripes"`` uses them always.

``part_boxes_np`` (NumPy, one image, loops) is the reference of
``part_boxes_tf`` (TensorFlow, batched, for the tf.data pipeline);
``crop_parts_tf`` cuts R0 to (H, W) and R1..R4 to (parts.height,
parts.width) with ``tf.image.crop_and_resize`` (bilinear, pixel-centre
aligned, no antialiasing), filling outside the image with a given colour.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from reidjax.data import keypoints as keypoints_lib
from reidjax.data.tensorflow_cpu import tf

SOURCES = ("pose", "stripes")
PART_NAMES = ("whole", "head", "upper_body", "upper_legs", "lower_legs")
# Softmax temperature of the canonical-pose weights (fitting error in units
# of the fitted stature): a pose 0.05 worse weighs e^-2.5 ~ 0.08 as much.
FIT_TEMPERATURE = 0.02
# A pose whose body height is below this fraction of the image height is
# taken as a failed fit (stripes instead).
MIN_BODY_HEIGHT = 0.1
_MIN_CONFIDENT = 2  # Joints needed for a scale.


def _pose(**joints: tuple[float, float]) -> np.ndarray:
  out = np.zeros((keypoints_lib.NUM_JOINTS, 2), np.float64)
  assert sorted(joints) == sorted(keypoints_lib.COCO18_NAMES), sorted(joints)
  for name, xy in joints.items():
    out[keypoints_lib.JOINT_INDEX[name]] = xy
  return out


_HEAD_FRONT = dict(nose=(0.0, 0.085), right_eye=(-0.025, 0.065),
                   left_eye=(0.025, 0.065), right_ear=(-0.06, 0.075),
                   left_ear=(0.06, 0.075), neck=(0.0, 0.175))
_HEAD_SIDE = dict(nose=(0.06, 0.09), right_eye=(0.045, 0.065),
                  left_eye=(0.05, 0.065), right_ear=(-0.01, 0.075),
                  left_ear=(-0.005, 0.075), neck=(0.0, 0.175))
# Stature units: x centred on the body, y from the head top (0) to the soles
# (1). Front views have the person's right on the image's left (x < 0); the
# side views face the image's right.
_BASE_POSES = (
    _pose(**_HEAD_FRONT,  # Front, standing.
          right_shoulder=(-0.11, 0.18), right_elbow=(-0.14, 0.37),
          right_wrist=(-0.15, 0.52), left_shoulder=(0.11, 0.18),
          left_elbow=(0.14, 0.37), left_wrist=(0.15, 0.52),
          right_hip=(-0.055, 0.52), right_knee=(-0.06, 0.73),
          right_ankle=(-0.065, 0.95), left_hip=(0.055, 0.52),
          left_knee=(0.06, 0.73), left_ankle=(0.065, 0.95)),
    _pose(**_HEAD_FRONT,  # Front, walking (right foot forward).
          right_shoulder=(-0.11, 0.18), right_elbow=(-0.13, 0.36),
          right_wrist=(-0.12, 0.5), left_shoulder=(0.11, 0.18),
          left_elbow=(0.15, 0.37), left_wrist=(0.17, 0.51),
          right_hip=(-0.055, 0.52), right_knee=(-0.055, 0.74),
          right_ankle=(-0.05, 0.97), left_hip=(0.055, 0.52),
          left_knee=(0.06, 0.72), left_ankle=(0.07, 0.92)),
    _pose(**_HEAD_SIDE,  # Side, walking (right leg forward).
          right_shoulder=(0.01, 0.18), right_elbow=(0.05, 0.36),
          right_wrist=(0.1, 0.49), left_shoulder=(-0.01, 0.18),
          left_elbow=(-0.05, 0.36), left_wrist=(-0.09, 0.49),
          right_hip=(0.01, 0.52), right_knee=(0.08, 0.72),
          right_ankle=(0.13, 0.94), left_hip=(-0.01, 0.52),
          left_knee=(-0.05, 0.73), left_ankle=(-0.12, 0.93)),
    _pose(**_HEAD_SIDE,  # Side, standing.
          right_shoulder=(0.01, 0.18), right_elbow=(0.0, 0.37),
          right_wrist=(0.01, 0.52), left_shoulder=(-0.01, 0.18),
          left_elbow=(-0.01, 0.37), left_wrist=(0.0, 0.52),
          right_hip=(0.01, 0.52), right_knee=(0.02, 0.73),
          right_ankle=(0.02, 0.95), left_hip=(-0.01, 0.52),
          left_knee=(0.0, 0.73), left_ankle=(0.0, 0.95)),
)


def _canonical_poses() -> np.ndarray:
  bases = list(_BASE_POSES)
  # Side walking with the left leg forward: the limbs' labels swapped.
  bases.append(bases[2][keypoints_lib.FLIP_PERMUTATION])
  mirrors = []
  for pose in bases:
    mirror = pose[keypoints_lib.FLIP_PERMUTATION].copy()
    mirror[:, 0] = -mirror[:, 0]
    mirrors.append(mirror)
  # Pose 2k + 1 is the mirror of pose 2k.
  return np.stack([p for pair in zip(bases, mirrors) for p in pair])


# (K, 18, 2) canonical poses, closed under mirroring (x -> -x, left <-> right).
CANONICAL_POSES = _canonical_poses()


@dataclasses.dataclass(frozen=True)
class PartConfig:
  """Part-box settings; build it with ``from_config(data.parts)``.

  Attributes:
    source: "pose" (Eq. 1-2 from keypoints) or "stripes" (four fixed
      horizontal stripes, no keypoints needed).
    height: part crop height (R1..R4).
    width: part crop width.
    beta: overlap of neighbouring boxes, a fraction of the body height H.
    joint_sets: joint indices of P0..P4 (whole, head, upper body, upper
      legs, lower legs).
    min_confidence: joints below this confidence count as missing.
  """

  source: str
  height: int
  width: int
  beta: float
  joint_sets: tuple[tuple[int, ...], ...]
  min_confidence: float

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"data.parts.source must be one of {SOURCES}, got "
                       f"{self.source!r}.")
    if self.height < 1 or self.width < 1:
      raise ValueError(f"data.parts crop size must be positive, got "
                       f"{self.height}x{self.width}.")
    if not 0.0 <= self.beta < 0.5:
      raise ValueError(f"data.parts.beta is a fraction of the body height in "
                       f"[0, 0.5), got {self.beta}.")
    if len(self.joint_sets) != len(PART_NAMES) or not all(self.joint_sets):
      raise ValueError(f"PartConfig needs five non-empty joint sets "
                       f"{PART_NAMES}, got {self.joint_sets}.")
    if not 0.0 <= self.min_confidence <= 1.0:
      raise ValueError(f"data.parts.min_confidence must be in [0, 1], got "
                       f"{self.min_confidence}.")

  @classmethod
  def from_config(cls, parts: Any) -> "PartConfig":
    """From the ``data.parts`` config section."""
    sets = parts.joint_sets
    return cls(source=parts.source, height=int(parts.height),
               width=int(parts.width), beta=float(parts.beta),
               joint_sets=tuple(keypoints_lib.joint_indices(sets[name])
                                for name in PART_NAMES),
               min_confidence=float(parts.min_confidence))


# ------------------------------------------------------------------ NumPy --


def stripe_boxes(image_height: float, image_width: float,
                 beta: float) -> np.ndarray:
  """(5, 4) boxes: the whole image and four overlapping horizontal stripes."""
  h, w = float(image_height), float(image_width)
  boxes = [(0.0, 0.0, w, h)]
  for i in range(4):
    boxes.append((0.0, max(0.0, i * h / 4 - beta * h), w,
                  min(h, (i + 1) * h / 4 + beta * h)))
  return np.asarray(boxes, np.float64)


def fill_missing_np(keypoints: np.ndarray,
                    min_confidence: float) -> np.ndarray | None:
  """(18, 2) joints with the unconfident ones filled from canonical poses.

  Returns None when no pose can be fitted (fewer than 2 confident joints, or
  no pose with a positive scale).
  """
  xy = np.asarray(keypoints, np.float64)[:, :2]
  conf = np.asarray(keypoints, np.float64)[:, 2]
  known = (conf > 0) & (conf >= min_confidence)
  if known.sum() < _MIN_CONFIDENT:
    return None
  fits, errors = [], []
  for pose in CANONICAL_POSES:
    p, k = pose[known], xy[known]
    dp, dk = p - p.mean(0), k - k.mean(0)
    den = (dp * dp).sum()
    scale = (dp * dk).sum() / den if den > 1e-12 else 0.0
    fit = scale * pose + (k.mean(0) - scale * p.mean(0))
    fits.append(fit)
    rms = np.sqrt(((fit[known] - k) ** 2).sum(1).mean())
    errors.append(rms / scale if scale > 0 else np.inf)
  errors = np.asarray(errors)
  if not np.isfinite(errors).any():
    return None
  logits = -(errors - errors.min()) / FIT_TEMPERATURE
  weights = np.exp(logits) / np.exp(logits).sum()
  filled = np.tensordot(weights, np.stack(fits), axes=1)
  return np.where(known[:, None], xy, filled)


def part_boxes_np(keypoints: np.ndarray, image_height: float,
                  image_width: float, config: PartConfig) -> np.ndarray:
  """(5, 4) float64 boxes R0..R4 (x1, y1, x2, y2) of one image (Eq. 1-2).

  Args:
    keypoints: (18, 3) [x, y, confidence] in the image's pixels.
    image_height, image_width: the image's size (for the stripes).
    config: part settings.
  """
  if config.source == "stripes":
    return stripe_boxes(image_height, image_width, config.beta)
  joints = fill_missing_np(keypoints, config.min_confidence)
  if joints is None:
    return stripe_boxes(image_height, image_width, config.beta)
  x, y = joints[:, 0], joints[:, 1]
  p0, p1, p2, p3, p4 = (list(s) for s in config.joint_sets)
  top = 2 * y[p1].min() - y[p1].max()
  bottom = 4 / 3 * y[p4].max() - 1 / 3 * y[p4].min()
  body = bottom - top
  if body < MIN_BODY_HEIGHT * image_height:
    return stripe_boxes(image_height, image_width, config.beta)
  x_c = x[p0].mean()
  x_l = min(x_c - body / 4, x[p0].min())
  x_r = max(x_c + body / 4, x[p0].max())
  beta = config.beta * body
  rows = [(top, bottom), (top, y[p1].max() + beta),
          (y[p2].min() - beta, y[p2].max() + beta),
          (y[p3].min() - beta, y[p3].max() + beta),
          (y[p4].min() - beta, bottom)]
  # A box at least 1 px high (a set whose joints share one row, beta = 0).
  return np.asarray([(x_l, y1, x_r, max(y2, y1 + 1.0)) for y1, y2 in rows],
                    np.float64)


def mirror_boxes(boxes: np.ndarray, image_width: float) -> np.ndarray:
  """(..., 4) boxes of an image -> the boxes of its mirror."""
  boxes = np.asarray(boxes)
  return np.stack([image_width - boxes[..., 2], boxes[..., 1],
                   image_width - boxes[..., 0], boxes[..., 3]], axis=-1)


def to_box_frame(keypoints: np.ndarray, box: Sequence[float], height: int,
                 width: int) -> np.ndarray:
  """(..., 18, 3) keypoints -> pixels of ``box`` resized to (height, width)."""
  keypoints = np.array(keypoints, np.float64)
  x1, y1, x2, y2 = (np.asarray(v, np.float64)[..., None] for v in box)
  keypoints[..., 0] = (keypoints[..., 0] - x1) * width / (x2 - x1)
  keypoints[..., 1] = (keypoints[..., 1] - y1) * height / (y2 - y1)
  return keypoints


# ------------------------------------------------------------- TensorFlow --


def _stripes_tf(batch: tf.Tensor, image_height: int, image_width: int,
                beta: float) -> tf.Tensor:
  stripes = tf.constant(stripe_boxes(image_height, image_width, beta),
                        tf.float32)
  return tf.tile(stripes[None], [batch, 1, 1])


def part_boxes_tf(keypoints: tf.Tensor, image_height: int, image_width: int,
                  config: PartConfig) -> tf.Tensor:
  """Batched Eq. 1-2: (B, 18, 3) keypoints -> (B, 5, 4) float32 boxes.

  Same function as ``part_boxes_np`` (float32), for the tf.data pipeline.
  """
  keypoints = tf.convert_to_tensor(keypoints, tf.float32)
  batch = tf.shape(keypoints)[0]
  stripes = _stripes_tf(batch, image_height, image_width, config.beta)
  if config.source == "stripes":
    return stripes
  xy, conf = keypoints[..., :2], keypoints[..., 2]
  known = (conf > 0) & (conf >= config.min_confidence)  # (B, 18)
  mask = tf.cast(known, tf.float32)[:, None, :, None]  # (B, 1, 18, 1)
  count = tf.reduce_sum(tf.cast(known, tf.float32), axis=1)  # (B,)
  safe_count = tf.maximum(count, 1.0)[:, None, None]  # (B, 1, 1)
  poses = tf.constant(CANONICAL_POSES, tf.float32)[None]  # (1, K, 18, 2)
  xy_k = xy[:, None]  # (B, 1, 18, 2)
  pose_mean = tf.reduce_sum(mask * poses, axis=2) / safe_count  # (B, K, 2)
  joint_mean = tf.reduce_sum(mask * xy_k, axis=2) / safe_count  # (B, 1, 2)
  dp = (poses - pose_mean[:, :, None]) * mask
  dk = (xy_k - joint_mean[:, :, None]) * mask
  den = tf.reduce_sum(dp * dp, axis=[2, 3])  # (B, K)
  scale = tf.where(den > 1e-12,
                   tf.reduce_sum(dp * dk, axis=[2, 3]) / tf.maximum(den, 1e-12),
                   0.0)
  shift = joint_mean - scale[..., None] * pose_mean  # (B, K, 2)
  fits = scale[..., None, None] * poses + shift[:, :, None]  # (B, K, 18, 2)
  sq = tf.reduce_sum(mask * tf.square(fits - xy_k), axis=[2, 3])
  rms = tf.sqrt(sq / safe_count[..., 0])
  valid = scale > 0
  error = tf.where(valid, rms / tf.where(valid, scale, 1.0), np.inf)
  logits = tf.where(valid, -(error - tf.reduce_min(error, axis=1,
                                                   keepdims=True))
                    / FIT_TEMPERATURE, -np.inf)
  any_valid = tf.reduce_any(valid, axis=1)
  weights = tf.nn.softmax(tf.where(any_valid[:, None], logits, 0.0), axis=1)
  filled = tf.einsum("bk,bkjc->bjc", weights, fits)
  joints = tf.where(known[..., None], xy, filled)  # (B, 18, 2)
  x, y = joints[..., 0], joints[..., 1]

  def over(values, part, reduce):
    return reduce(tf.gather(values, list(config.joint_sets[part]), axis=1),
                  axis=1)

  top = 2 * over(y, 1, tf.reduce_min) - over(y, 1, tf.reduce_max)
  bottom = 4 / 3 * over(y, 4, tf.reduce_max) - 1 / 3 * over(y, 4,
                                                             tf.reduce_min)
  body = bottom - top
  x_c = over(x, 0, tf.reduce_mean)
  x_l = tf.minimum(x_c - body / 4, over(x, 0, tf.reduce_min))
  x_r = tf.maximum(x_c + body / 4, over(x, 0, tf.reduce_max))
  beta = config.beta * body
  rows = [(top, bottom), (top, over(y, 1, tf.reduce_max) + beta)]
  for part in (2, 3):
    rows.append((over(y, part, tf.reduce_min) - beta,
                 over(y, part, tf.reduce_max) + beta))
  rows.append((over(y, 4, tf.reduce_min) - beta, bottom))
  boxes = tf.stack([tf.stack([x_l, y1, x_r, tf.maximum(y2, y1 + 1.0)], -1)
                    for y1, y2 in rows], axis=1)  # (B, 5, 4)
  fitted = ((count >= _MIN_CONFIDENT) & any_valid
            & (body >= MIN_BODY_HEIGHT * image_height))
  return tf.where(fitted[:, None, None], boxes, stripes)


def _crop(images: tf.Tensor, boxes: tf.Tensor, height: int, width: int,
          fill: tf.Tensor) -> tf.Tensor:
  """(B, H, W, C), (B, n, 4) -> (B, n, height, width, C) bilinear crops.

  Output pixel (i, j) of box (x1, y1, x2, y2) samples the continuous point
  (x1 + (j + 0.5) (x2 - x1) / width, y1 + (i + 0.5) (y2 - y1) / height), so
  a box equal to the image reproduces it at its own size, and the crop of
  a mirrored box is the mirror of the crop. Points outside the image read
  ``fill``.
  """
  shape = tf.shape(images)
  b, n = tf.shape(boxes)[0], tf.shape(boxes)[1]
  img_h = tf.cast(shape[1], tf.float32)
  img_w = tf.cast(shape[2], tf.float32)
  x1, y1, x2, y2 = tf.unstack(tf.reshape(boxes, [-1, 4]), axis=1)
  # crop_and_resize samples pixel indices a + k (b - a) / (size - 1), the
  # index of the continuous point u being u - 0.5.
  ya = y1 + 0.5 * (y2 - y1) / height - 0.5
  yb = y2 - 0.5 * (y2 - y1) / height - 0.5
  xa = x1 + 0.5 * (x2 - x1) / width - 0.5
  xb = x2 - 0.5 * (x2 - x1) / width - 0.5
  norm_h, norm_w = tf.maximum(img_h - 1, 1.0), tf.maximum(img_w - 1, 1.0)
  normalised = tf.stack([ya / norm_h, xa / norm_w, yb / norm_h, xb / norm_w],
                        axis=1)
  index = tf.repeat(tf.range(b), n)
  # crop_and_resize fills with a scalar: crop (image - fill), add fill back.
  crops = tf.image.crop_and_resize(images - fill, normalised, index,
                                   (height, width), extrapolation_value=0.0)
  crops = crops + fill
  return tf.reshape(crops, [b, n, height, width, images.shape[-1]])


def crop_parts_tf(images: tf.Tensor, boxes: tf.Tensor, config: PartConfig,
                  fill: Sequence[float] = (0.0, 0.0, 0.0)
                  ) -> tuple[tf.Tensor, tf.Tensor]:
  """Cuts the whole body and the four parts out of a batch of images.

  Args:
    images: (B, H, W, C) float32.
    boxes: (B, 5, 4) R0..R4 in the images' pixels.
    config: part settings (parts crop size).
    fill: (C,) value of points outside the image.

  Returns:
    (B, H, W, C) R0 crops (the images' own size) and
    (B, 4, parts.height, parts.width, C) R1..R4 crops.
  """
  fill = tf.constant(np.asarray(fill, np.float32))
  height, width = images.shape[1], images.shape[2]
  whole = _crop(images, boxes[:, :1], height, width, fill)[:, 0]
  parts = _crop(images, boxes[:, 1:], config.height, config.width, fill)
  return whole, parts


def to_box_frame_tf(keypoints: tf.Tensor, box: tf.Tensor, height: int,
                    width: int) -> tf.Tensor:
  """(B, 18, 3) keypoints -> pixels of (B, 4) ``box`` resized to (h, w)."""
  x1, y1, x2, y2 = (box[:, i:i + 1] for i in range(4))
  x = (keypoints[..., 0] - x1) * (width / (x2 - x1))
  y = (keypoints[..., 1] - y1) * (height / (y2 - y1))
  return tf.stack([x, y, keypoints[..., 2]], axis=-1)
