"""Per-image preprocessing and augmentation as TensorFlow ops.

The training recipe follows torchreid / fast-reid's standard ReID baseline:

  decode -> resize (H, W) bilinear -> random horizontal flip (p = 0.5)
  -> zero-pad by ``pad`` pixels + random crop back to (H, W)
  -> normalise with the ImageNet mean / std -> random erasing.

``crop="enlarge"`` (FGRA, Chen et al., AAAI 2020: "random crop from an image
enlarged by 1/8") replaces resize + pad + crop by: resize to
``enlarged_size(H, W)`` = round((1 + 1/8) x (H, W)), then a random (H, W)
crop, its offset uniform over the valid positions.

Keypoints (``preprocess_train_keypoints`` / ``preprocess_eval_keypoints``,
(18, 3) [x, y, confidence] in the original image's continuous pixel
coordinates, ``reidjax.data.keypoints``) follow the image: a flip mirrors x
(x -> w - x) and swaps left / right joints, a resize scales x and y, a crop
shifts them; confidences are kept (a joint moved outside the image keeps its
position and confidence). The image is exactly ``preprocess_train``'s.

``preprocess_train`` mirrors the decoded image *before* resizing: the two
commute (up to float rounding, ~1e-7) and the small uint8 image is cheaper to
mirror.

Randomness is stateless: every random op takes an explicit ``(2,)`` seed
derived from (global seed, step, position in the global batch) by
``image_seed``, so an image's augmentation does not depend on thread
scheduling, on how many processes share the batch, or on whether the run was
resumed.

Images are float32 (H, W, 3); values are in [0, 1] before ``normalize`` and
in normalised units after it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from reidjax.data import keypoints as keypoints_lib
from reidjax.data.tensorflow_cpu import tf
# torchvision's ImageNet statistics (RGB, images in [0, 1]), shared with
# reidjax.inference so that serving normalises like training.
from reidjax.imagenet import IMAGENET_MEAN, IMAGENET_STD

# Random erasing draws this many candidate rectangles at once and uses the
# first that fits (Zhong et al. try up to 100 times in a loop).
_ERASING_ATTEMPTS = 100
# data.crop: "pad" (zero-pad + random crop) or "enlarge" (resize by 1 + 1/8,
# random crop).
CROPS = ("pad", "enlarge")
ENLARGE = 1 / 8


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Training augmentation settings; build it from the experiment config.

  Attributes:
    height: output image height H.
    width: output image width W.
    flip: random horizontal flip with probability 0.5.
    pad: zero padding (pixels, each side) before the random (H, W) crop; 0
      disables pad + crop. Used by crop="pad" only.
    crop: "pad" (zero-pad by ``pad``, random crop) or "enlarge" (resize to
      ``enlarged_size(H, W)``, random (H, W) crop).
    random_erasing: probability of random erasing; 0 disables it.
    erasing_area: (min, max) erased fraction of the image area.
    erasing_min_aspect: the erased rectangle's height / width ratio is
      log-uniform in [erasing_min_aspect, 1 / erasing_min_aspect].
  """

  height: int
  width: int
  flip: bool = True
  pad: int = 10
  crop: str = "pad"
  random_erasing: float = 0.5
  erasing_area: tuple[float, float] = (0.02, 0.4)
  erasing_min_aspect: float = 0.3

  def __post_init__(self):
    if self.height < 1 or self.width < 1:
      raise ValueError(f"AugmentConfig: image size must be positive, got "
                       f"{self.height}x{self.width}.")
    if self.pad < 0:
      raise ValueError(f"AugmentConfig: pad must be >= 0, got {self.pad}.")
    if self.crop not in CROPS:
      raise ValueError(f"AugmentConfig: data.crop must be one of {CROPS}, got "
                       f"{self.crop!r}.")
    if not 0.0 <= self.random_erasing <= 1.0:
      raise ValueError(f"AugmentConfig: random_erasing is a probability, got "
                       f"{self.random_erasing}.")
    lo, hi = self.erasing_area
    if not 0.0 < lo <= hi <= 1.0:
      raise ValueError(f"AugmentConfig: bad erasing_area {self.erasing_area}.")
    if not 0.0 < self.erasing_min_aspect <= 1.0:
      raise ValueError(f"AugmentConfig: erasing_min_aspect must be in (0, 1], "
                       f"got {self.erasing_min_aspect}.")


def image_seed(seed: int | tf.Tensor, step: tf.Tensor,
               position: tf.Tensor) -> tf.Tensor:
  """Returns the (2,) int32 stateless seed of one training image.

  Args:
    seed: the run's global seed.
    step: training step (scalar int).
    position: the image's position in the *global* batch (scalar int), so the
      augmentation does not depend on the process count.
  """
  base = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])
  return tf.random.experimental.stateless_fold_in(base, position)


def decode_image(data: tf.Tensor) -> tf.Tensor:
  """Decodes encoded image bytes (scalar string) to uint8 (h, w, 3).

  JPEGs use libjpeg's accurate integer IDCT, which decodes bit-identically to
  PIL (what torchreid / fast-reid read images with); TF's default fast IDCT
  is off by up to ~5 levels and no faster here. PNG / BMP / GIF (first frame)
  also work, for datasets such as CUHK03 that ship PNGs.
  """
  return tf.cond(
      tf.io.is_jpeg(data),
      lambda: tf.io.decode_jpeg(data, channels=3,
                                dct_method="INTEGER_ACCURATE"),
      lambda: tf.io.decode_image(data, channels=3, expand_animations=False))


def resize(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """Resizes uint8 (h, w, 3) to float32 (height, width, 3) in [0, 1].

  Bilinear, antialiased when shrinking an axis, which matches PIL's BILINEAR
  (what torchvision's Resize uses on PIL images) when up- and when
  down-sampling.
  """
  image = tf.image.convert_image_dtype(image, tf.float32)
  shape = tf.shape(image)
  shrinks = (shape[0] > height) | (shape[1] > width)
  # Antialiasing changes nothing when enlarging but is ~6x slower: only pay
  # for it when some axis shrinks (Market-1501's 128x64 -> 256x128 does not).
  image = tf.cond(
      shrinks,
      lambda: tf.image.resize(image, (height, width), antialias=True),
      lambda: tf.image.resize(image, (height, width)))
  return tf.ensure_shape(image, (height, width, 3))


# Black (0 in [0, 1] units) after ``normalize``: what zero padding becomes.
NORMALIZED_BLACK = tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))


def normalize(image: tf.Tensor) -> tf.Tensor:
  """Maps float32 (..., 3) in [0, 1] to ImageNet-normalised units."""
  mean = np.asarray(IMAGENET_MEAN, np.float32)
  inv_std = 1.0 / np.asarray(IMAGENET_STD, np.float32)
  if image.shape.is_fully_defined():
    # TF broadcasts a (3,) vector over (H, W, 3) ~4x slower than it runs an
    # elementwise op on equal shapes, so materialise the constants.
    mean = np.broadcast_to(mean, image.shape).copy()
    inv_std = np.broadcast_to(inv_std, image.shape).copy()
  return (image - mean) * inv_std


def flip_draw(seed: tf.Tensor) -> tf.Tensor:
  """The bool scalar draw of ``random_flip`` (True: mirror)."""
  return tf.random.stateless_uniform([], seed) < 0.5


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Mirrors (H, W, C) left-right with probability 0.5."""
  # tf.cond, not tf.where: a broadcast select over the image is slow.
  return tf.cond(flip_draw(seed), lambda: tf.reverse(image, axis=[1]),
                 lambda: image)


def mirror_keypoints(keypoints: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  """(..., 18, 3) keypoints of an image of ``width`` -> its mirror's."""
  swapped = tf.gather(keypoints, keypoints_lib.FLIP_PERMUTATION, axis=-2)
  width = tf.cast(width, keypoints.dtype)
  return tf.concat([width - swapped[..., :1], swapped[..., 1:]], axis=-1)


def scale_keypoints(keypoints: tf.Tensor, sx: tf.Tensor,
                    sy: tf.Tensor) -> tf.Tensor:
  """Multiplies x by ``sx`` and y by ``sy`` (a resize)."""
  factors = tf.stack([tf.cast(sx, tf.float32), tf.cast(sy, tf.float32), 1.0])
  return keypoints * factors


def shift_keypoints(keypoints: tf.Tensor, dx: tf.Tensor,
                    dy: tf.Tensor) -> tf.Tensor:
  """Moves keypoints by (-dx, -dy): a crop whose origin is at (dx, dy)."""
  shift = tf.stack([tf.cast(dx, tf.float32), tf.cast(dy, tf.float32), 0.0])
  return keypoints - shift


def pad_crop_offset(pad: int, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """(dy, dx) int32 of ``pad_and_random_crop``: output (i, j) = input
  (i + dy, j + dx), each uniform in [-pad, pad]."""
  offset = tf.random.stateless_uniform([2], seed, minval=0,
                                       maxval=2 * pad + 1, dtype=tf.int32)
  return offset[0] - pad, offset[1] - pad


def enlarged_size(height: int, width: int) -> tuple[int, int]:
  """The size crop="enlarge" resizes to: round((1 + ENLARGE) x (H, W))."""
  return (int(round(height * (1 + ENLARGE))),
          int(round(width * (1 + ENLARGE))))


def enlarge_crop_offset(height: int, width: int,
                        seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """(oy, ox) int32 of crop="enlarge": uniform over the valid positions
  [0, H' - H] x [0, W' - W] of the (H, W) crop in the enlarged image."""
  big_h, big_w = enlarged_size(height, width)
  room = tf.constant([big_h - height, big_w - width], tf.float32)
  u = tf.random.stateless_uniform([2], seed)
  offset = tf.minimum(tf.floor(u * (room + 1.0)), room)
  offset = tf.cast(offset, tf.int32)
  return offset[0], offset[1]


def enlarge_and_random_crop(image: tf.Tensor, height: int, width: int,
                            seed: tf.Tensor) -> tf.Tensor:
  """Crops (height, width) out of an ``enlarged_size`` (H', W', C) image."""
  oy, ox = enlarge_crop_offset(height, width, seed)
  return tf.ensure_shape(image[oy:oy + height, ox:ox + width],
                         (height, width, image.shape[-1]))


def pad_and_random_crop(image: tf.Tensor, pad: int,
                        seed: tf.Tensor) -> tf.Tensor:
  """Zero-pads (H, W, C) by ``pad`` on each side and crops a random (H, W).

  The crop offset is uniform in [0, 2 * pad] on each axis, like
  ``torchvision.transforms.RandomCrop(size, padding=pad)``.
  """
  if pad == 0:
    return image
  shape = tf.shape(image)
  # Output pixel (i, j) is input pixel (i + dy, j + dx). Cutting out the part
  # of the input that stays visible and zero-padding it back to (H, W) gives
  # the same crop as padding first, with one large copy fewer.
  dy, dx = pad_crop_offset(pad, seed)
  visible = image[tf.maximum(dy, 0):shape[0] + tf.minimum(dy, 0),
                  tf.maximum(dx, 0):shape[1] + tf.minimum(dx, 0)]
  cropped = tf.pad(visible, [[tf.maximum(-dy, 0), tf.maximum(dy, 0)],
                             [tf.maximum(-dx, 0), tf.maximum(dx, 0)], [0, 0]])
  return tf.ensure_shape(cropped, image.shape)


def random_erasing(image: tf.Tensor,
                   prob: float,
                   seed: tf.Tensor,
                   area: tuple[float, float] = (0.02, 0.4),
                   min_aspect: float = 0.3) -> tf.Tensor:
  """Random erasing (Zhong et al., AAAI 2020) of a normalised (H, W, C).

  With probability ``prob`` a rectangle of area ``U(area) * H * W`` and
  aspect ratio (height / width) log-uniform in ``[min_aspect, 1/min_aspect]``
  (torchvision / fast-reid's sampling) is placed uniformly at random and
  filled with 0, i.e. the ImageNet mean colour after normalisation (what
  fast-reid and torchvision's ``RandomErasing(value=mean)`` do); filling with
  the mean rather than noise keeps the erased region's statistics those of an
  average image. Candidates that do not fit are rejected; if none of the
  candidate rectangles fits, the image is left unchanged.

  Args:
    image: float32 (H, W, C), already normalised.
    prob: probability of erasing.
    seed: (2,) stateless seed.
    area: (min, max) erased fraction of H * W.
    min_aspect: lower bound of the aspect ratio.

  Returns:
    float32 (H, W, C).
  """
  if prob <= 0.0:
    return image
  h_img, w_img = image.shape[0], image.shape[1]
  n = _ERASING_ATTEMPTS
  # One draw for everything: per-op overhead, not arithmetic, dominates here.
  u = tf.random.stateless_uniform([2 * n + 3], seed)

  def erase():
    # Only erased images pay for choosing the rectangle.
    target = (area[0] + (area[1] - area[0]) * u[1:n + 1]) * (h_img * w_img)
    log_min = math.log(min_aspect)
    aspect = tf.exp(log_min - 2.0 * log_min * u[n + 1:2 * n + 1])
    h = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    w = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = (h < h_img) & (w < w_img) & (h > 0) & (w > 0)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    # No candidate fits: erase an empty rectangle, i.e. nothing.
    h = tf.where(fits[first], h[first], 0)
    w = tf.where(fits[first], w[first], 0)
    # Top-left corner uniform over the valid positions [0, H - h] x [0, W - w].
    y0 = tf.minimum(tf.cast(u[2 * n + 1] * tf.cast(h_img - h + 1, tf.float32),
                            tf.int32), h_img - h)
    x0 = tf.minimum(tf.cast(u[2 * n + 2] * tf.cast(w_img - w + 1, tf.float32),
                            tf.int32), w_img - w)
    # Splicing a zero block in with two concats copies the image once; a
    # mask multiply or select is several times slower in tf.data.
    band = image[y0:y0 + h]
    hole = tf.zeros(tf.stack([h, w, tf.shape(image)[2]]), image.dtype)
    band = tf.concat([band[:, :x0], hole, band[:, x0 + w:]], axis=1)
    return tf.concat([image[:y0], band, image[y0 + h:]], axis=0)

  out = tf.cond(u[0] < prob, erase, lambda: image)
  return tf.ensure_shape(out, image.shape)


def preprocess_eval(data: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """Encoded bytes -> normalised float32 (height, width, 3), no randomness."""
  return normalize(resize(decode_image(data), height, width))


def preprocess_eval_keypoints(data: tf.Tensor, keypoints: tf.Tensor,
                              height: int, width: int
                              ) -> tuple[tf.Tensor, tf.Tensor]:
  """``preprocess_eval`` and the image's (18, 3) keypoints moved with it."""
  image = decode_image(data)
  shape = tf.cast(tf.shape(image), tf.float32)
  keypoints = scale_keypoints(tf.cast(keypoints, tf.float32),
                              width / shape[1], height / shape[0])
  return normalize(resize(image, height, width)), keypoints


def _augment(data: tf.Tensor, config: AugmentConfig, seed: tf.Tensor,
             keypoints: tf.Tensor | None):
  """The training augmentation of an image (and of its keypoints)."""
  flip_seed, crop_seed, erase_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=3))
  image = decode_image(data)
  if keypoints is not None:
    keypoints = tf.cast(keypoints, tf.float32)
    shape = tf.cast(tf.shape(image), tf.float32)
    if config.flip:
      keypoints = tf.cond(flip_draw(flip_seed),
                          lambda: mirror_keypoints(keypoints, shape[1]),
                          lambda: keypoints)
  if config.flip:
    # Before resizing: see the module docstring.
    image = random_flip(image, flip_seed)
  if config.crop == "pad":
    size = (config.height, config.width)
  else:
    size = enlarged_size(config.height, config.width)
  image = resize(image, *size)
  if keypoints is not None:
    keypoints = scale_keypoints(keypoints, size[1] / shape[1],
                                size[0] / shape[0])
  if config.crop == "pad":
    image = pad_and_random_crop(image, config.pad, crop_seed)
    if keypoints is not None and config.pad:
      dy, dx = pad_crop_offset(config.pad, crop_seed)
      keypoints = shift_keypoints(keypoints, dx, dy)
  else:
    image = enlarge_and_random_crop(image, config.height, config.width,
                                    crop_seed)
    if keypoints is not None:
      oy, ox = enlarge_crop_offset(config.height, config.width, crop_seed)
      keypoints = shift_keypoints(keypoints, ox, oy)
  image = normalize(image)
  image = random_erasing(image, config.random_erasing, erase_seed,
                         config.erasing_area, config.erasing_min_aspect)
  return image, keypoints


def preprocess_train(data: tf.Tensor, config: AugmentConfig,
                     seed: tf.Tensor) -> tf.Tensor:
  """Encoded bytes -> augmented, normalised float32 (H, W, 3).

  Args:
    data: scalar string tensor, the encoded image.
    config: augmentation settings.
    seed: (2,) stateless seed of this image (see ``image_seed``).
  """
  return _augment(data, config, seed, None)[0]


def preprocess_train_keypoints(data: tf.Tensor, keypoints: tf.Tensor,
                               config: AugmentConfig, seed: tf.Tensor
                               ) -> tuple[tf.Tensor, tf.Tensor]:
  """``preprocess_train`` (same image) and its (18, 3) keypoints moved along.

  Args:
    data: scalar string tensor, the encoded image.
    keypoints: (18, 3) [x, y, confidence] in the original image's pixels.
    config: augmentation settings.
    seed: (2,) stateless seed of this image (see ``image_seed``).

  Returns:
    float32 (H, W, 3) image and (18, 3) keypoints in its pixels.
  """
  return _augment(data, config, seed, keypoints)
