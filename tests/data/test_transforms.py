"""Tests for the per-image TF transforms."""

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from reidjax.data import transforms

_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _smooth_rgb(h, w):
  """(h, w, 3) uint8 with smooth, position-dependent content."""
  yy, xx = np.mgrid[0:h, 0:w]
  img = np.stack([xx * 255.0 / w, yy * 255.0 / h,
                  128 + 60 * np.sin(xx / 5.0 + yy / 7.0)], -1)
  return img.clip(0, 255).astype(np.uint8)


def _jpeg_bytes(array, quality=90):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, "JPEG", quality=quality)
  return buf.getvalue()


def _seed(i):
  return transforms.image_seed(0, 0, i)


def test_normalize_matches_numpy():
  x = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
  expected = (x - _MEAN) / _STD
  np.testing.assert_allclose(transforms.normalize(tf.constant(x)).numpy(),
                             expected, rtol=1e-5, atol=1e-5)
  # The ImageNet mean colour maps to 0 (the random-erasing fill value).
  np.testing.assert_allclose(
      transforms.normalize(tf.constant(_MEAN[None, None])).numpy(), 0.0,
      atol=1e-6)


def test_decode_jpeg_matches_pil_exactly():
  data = _jpeg_bytes(_smooth_rgb(128, 64), quality=95)
  ours = transforms.decode_image(tf.constant(data)).numpy()
  pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  assert ours.dtype == np.uint8 and ours.shape == (128, 64, 3)
  np.testing.assert_array_equal(ours, pil)


def test_decode_png_works():
  img = _smooth_rgb(20, 10)
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, "PNG")
  np.testing.assert_array_equal(
      transforms.decode_image(tf.constant(buf.getvalue())).numpy(), img)


@pytest.mark.parametrize("size", [(256, 128), (64, 32), (96, 80)])
def test_decode_resize_matches_pil_bilinear(size):
  """Up-, down- and mixed resizing agree with PIL to within uint8 rounding."""
  height, width = size
  data = _jpeg_bytes(_smooth_rgb(128, 64))
  ours = transforms.resize(transforms.decode_image(tf.constant(data)),
                           height, width).numpy()
  pil = Image.open(io.BytesIO(data)).convert("RGB")
  ref = np.asarray(pil.resize((width, height), Image.BILINEAR)) / 255.0
  assert ours.shape == (height, width, 3) and ours.dtype == np.float32
  # PIL works in fixed point and rounds to uint8: at most one level off, and
  # rarely (non-antialiased bilinear is 3 levels off when shrinking here).
  np.testing.assert_allclose(ours, ref, atol=1.01 / 255)
  assert np.abs(ours - ref).mean() < 0.4 / 255


def test_flip_mirrors_left_right_half_the_time():
  img = np.random.default_rng(1).random((8, 6, 3)).astype(np.float32)
  flipped = 0
  for i in range(200):
    out = transforms.random_flip(tf.constant(img), _seed(i)).numpy()
    if np.array_equal(out, img[:, ::-1]):
      flipped += 1
    else:
      np.testing.assert_array_equal(out, img)
  # Binomial(200, 0.5): mean 100, sd ~7.
  assert 70 <= flipped <= 130


def test_pad_and_crop_is_a_shifted_copy_with_zero_border():
  h, w, pad = 12, 8, 3
  img = np.random.default_rng(2).random((h, w, 3)).astype(np.float32) + 0.5
  padded = np.pad(img, [(pad, pad), (pad, pad), (0, 0)])
  offsets = set()
  for i in range(300):
    out = transforms.pad_and_random_crop(tf.constant(img), pad,
                                         _seed(i)).numpy()
    assert out.shape == (h, w, 3)
    matches = [(dy, dx)
               for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
               if np.array_equal(out, padded[dy:dy + h, dx:dx + w])]
    assert len(matches) == 1, i
    offsets.add(matches[0])
  dys, dxs = zip(*offsets)
  # Offsets span the whole [0, 2 * pad] range on both axes.
  assert set(dys) == set(range(2 * pad + 1))
  assert set(dxs) == set(range(2 * pad + 1))
  assert (0, 0) in offsets or (2 * pad, 2 * pad) in offsets


def test_pad_zero_is_identity():
  img = tf.random.uniform((6, 4, 3))
  out = transforms.pad_and_random_crop(img, 0, _seed(0))
  np.testing.assert_array_equal(out.numpy(), img.numpy())


def _erased_box(out):
  """Returns (mask, (y0, y1, x0, x1)) of the all-zero pixels of ``out``."""
  mask = (out == 0).all(-1)
  if not mask.any():
    return mask, None
  ys, xs = np.nonzero(mask)
  return mask, (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)


def test_random_erasing_rectangle_area_and_aspect():
  h, w = 256, 128
  img = np.full((h, w, 3), 1.5, np.float32)  # No zeros before erasing.
  areas = []
  for i in range(200):
    out = transforms.random_erasing(tf.constant(img), 1.0, _seed(i)).numpy()
    mask, box = _erased_box(out)
    assert box is not None, f"seed {i}: prob 1 must erase"
    y0, y1, x0, x1 = box
    # A filled rectangle, and nothing else touched.
    assert mask[y0:y1, x0:x1].all() and mask.sum() == (y1 - y0) * (x1 - x0)
    np.testing.assert_array_equal(out[~mask], 1.5)
    frac = mask.sum() / (h * w)
    # [0.02, 0.4] up to rounding h and w to integers.
    assert 0.018 <= frac <= 0.42, (i, frac)
    assert 0.3 * 0.85 <= (y1 - y0) / (x1 - x0) <= 1 / 0.3 / 0.85
    areas.append(frac)
  # The area is spread over the range, not stuck at one value.
  assert min(areas) < 0.08 and max(areas) > 0.3


def test_random_erasing_probability():
  img = tf.fill((64, 32, 3), 2.0)
  erased = sum(
      _erased_box(transforms.random_erasing(img, 0.5, _seed(i)).numpy())[1]
      is not None for i in range(400))
  # Binomial(400, 0.5): mean 200, sd 10.
  assert 160 <= erased <= 240
  untouched = transforms.random_erasing(img, 0.0, _seed(0)).numpy()
  np.testing.assert_array_equal(untouched, 2.0)


def test_preprocess_train_reproducible_and_seed_dependent():
  data = tf.constant(_jpeg_bytes(_smooth_rgb(128, 64)))
  config = transforms.AugmentConfig(height=64, width=32, pad=4)
  a = transforms.preprocess_train(data, config, transforms.image_seed(3, 5, 1))
  b = transforms.preprocess_train(data, config, transforms.image_seed(3, 5, 1))
  assert a.shape == (64, 32, 3) and a.dtype == tf.float32
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  others = [transforms.preprocess_train(data, config, s).numpy()
            for s in (transforms.image_seed(3, 5, 2),
                      transforms.image_seed(3, 6, 1),
                      transforms.image_seed(4, 5, 1))]
  # Each of (seed, step, position) changes the augmentation.
  assert all(not np.array_equal(a.numpy(), o) for o in others)


def test_preprocess_train_without_augmentation_equals_eval():
  data = tf.constant(_jpeg_bytes(_smooth_rgb(128, 64)))
  config = transforms.AugmentConfig(height=96, width=48, flip=False, pad=0,
                                    random_erasing=0.0)
  train = transforms.preprocess_train(data, config, _seed(0)).numpy()
  ev = transforms.preprocess_eval(data, 96, 48).numpy()
  np.testing.assert_array_equal(train, ev)
  # And eval is normalise(resize(decode)) against PIL + NumPy.
  pil = Image.open(io.BytesIO(data.numpy())).convert("RGB")
  ref = (np.asarray(pil.resize((48, 96), Image.BILINEAR)) / 255.0 - _MEAN)
  ref /= _STD
  np.testing.assert_allclose(ev, ref, atol=1.01 / 255 / 0.224)


@pytest.mark.parametrize("kwargs", [
    dict(height=0, width=4), dict(height=4, width=4, pad=-1),
    dict(height=4, width=4, random_erasing=1.5),
    dict(height=4, width=4, erasing_area=(0.5, 0.2)),
])
def test_augment_config_validation(kwargs):
  with pytest.raises(ValueError, match="AugmentConfig"):
    transforms.AugmentConfig(**kwargs)
