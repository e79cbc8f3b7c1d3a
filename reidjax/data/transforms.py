"""Per-image preprocessing and augmentation as TensorFlow ops.

The training recipe follows torchreid / fast-reid's standard ReID baseline:

  decode -> resize (H, W) bilinear -> random horizontal flip (p = 0.5)
  -> zero-pad by ``pad`` pixels + random crop back to (H, W)
  -> normalise with the ImageNet mean / std -> random erasing.

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

from reidjax.data.tensorflow_cpu import tf
# torchvision's ImageNet statistics (RGB, images in [0, 1]), shared with
# reidjax.inference so that serving normalises like training.
from reidjax.imagenet import IMAGENET_MEAN, IMAGENET_STD

# Random erasing draws this many candidate rectangles at once and uses the
# first that fits (Zhong et al. try up to 100 times in a loop).
_ERASING_ATTEMPTS = 100


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Training augmentation settings; build it from the experiment config.

  Attributes:
    height: output image height H.
    width: output image width W.
    flip: random horizontal flip with probability 0.5.
    pad: zero padding (pixels, each side) before the random (H, W) crop; 0
      disables pad + crop.
    random_erasing: probability of random erasing; 0 disables it.
    erasing_area: (min, max) erased fraction of the image area.
    erasing_min_aspect: the erased rectangle's height / width ratio is
      log-uniform in [erasing_min_aspect, 1 / erasing_min_aspect].
  """

  height: int
  width: int
  flip: bool = True
  pad: int = 10
  random_erasing: float = 0.5
  erasing_area: tuple[float, float] = (0.02, 0.4)
  erasing_min_aspect: float = 0.3

  def __post_init__(self):
    if self.height < 1 or self.width < 1:
      raise ValueError(f"AugmentConfig: image size must be positive, got "
                       f"{self.height}x{self.width}.")
    if self.pad < 0:
      raise ValueError(f"AugmentConfig: pad must be >= 0, got {self.pad}.")
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


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Mirrors (H, W, C) left-right with probability 0.5."""
  flip = tf.random.stateless_uniform([], seed) < 0.5
  # tf.cond, not tf.where: a broadcast select over the image is slow.
  return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def pad_and_random_crop(image: tf.Tensor, pad: int,
                        seed: tf.Tensor) -> tf.Tensor:
  """Zero-pads (H, W, C) by ``pad`` on each side and crops a random (H, W).

  The crop offset is uniform in [0, 2 * pad] on each axis, like
  ``torchvision.transforms.RandomCrop(size, padding=pad)``.
  """
  if pad == 0:
    return image
  shape = tf.shape(image)
  offset = tf.random.stateless_uniform([2], seed, minval=0,
                                       maxval=2 * pad + 1, dtype=tf.int32)
  # Output pixel (i, j) is input pixel (i + dy, j + dx). Cutting out the part
  # of the input that stays visible and zero-padding it back to (H, W) gives
  # the same crop as padding first, with one large copy fewer.
  dy, dx = offset[0] - pad, offset[1] - pad
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


def preprocess_train(data: tf.Tensor, config: AugmentConfig,
                     seed: tf.Tensor) -> tf.Tensor:
  """Encoded bytes -> augmented, normalised float32 (H, W, 3).

  Args:
    data: scalar string tensor, the encoded image.
    config: augmentation settings.
    seed: (2,) stateless seed of this image (see ``image_seed``).
  """
  flip_seed, crop_seed, erase_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=3))
  image = decode_image(data)
  if config.flip:
    # Before resizing: see the module docstring.
    image = random_flip(image, flip_seed)
  image = resize(image, config.height, config.width)
  image = pad_and_random_crop(image, config.pad, crop_seed)
  image = normalize(image)
  return random_erasing(image, config.random_erasing, erase_seed,
                        config.erasing_area, config.erasing_min_aspect)
