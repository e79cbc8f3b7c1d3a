"""Part boxes of Attention-Driven ReID (Eq. 1-2): hand-computed values,
canonical-pose filling, the stripes fallback, mirror equivariance, NumPy vs
TensorFlow, and the crops."""

import numpy as np
import pytest

from configs import common
from reidjax.data import keypoints as keypoints_lib
from reidjax.data import part_boxes
from reidjax.data.tensorflow_cpu import tf

IMG_H, IMG_W = 128, 64

# A hand-made pose in a 128 x 64 image (COCO-18 order), every joint confident.
POSE_A = np.array([
    (32, 20), (32, 30),                      # nose, neck
    (24, 32), (22, 48), (21, 62),            # right shoulder, elbow, wrist
    (40, 32), (42, 48), (43, 62),            # left shoulder, elbow, wrist
    (28, 64), (28, 88), (28, 112),           # right hip, knee, ankle
    (36, 64), (36, 88), (37, 110),           # left hip, knee, ankle
    (30, 17), (34, 17), (27, 19), (37, 19),  # eyes, ears
], np.float64)


def _config(**overrides):
  parts = common.parts_config()
  for k, v in overrides.items():
    parts[k] = v
  return part_boxes.PartConfig.from_config(parts)


def _with_confidence(xy, conf=0.9):
  conf = np.broadcast_to(np.asarray(conf, np.float64), (len(xy),))
  return np.concatenate([xy, conf[:, None]], axis=1)


def _tf_boxes(keypoints, config, h=IMG_H, w=IMG_W):
  batch = np.asarray(keypoints, np.float32).reshape(-1, 18, 3)
  return part_boxes.part_boxes_tf(batch, h, w, config).numpy()


def _pose_a_boxes(beta):
  """Eq. 1-2 for POSE_A, by hand.

  Head P1 y: 20, 17, 17, 19, 19 -> min 17, max 20: top = 2*17 - 20 = 14.
  Lower legs P4 y: 88, 88, 112, 110 -> bottom = 4/3*112 - 1/3*88 = 120.
  H = 106. Sum of the 18 x = 577: x_c = 577/18 = 32.06; x_c -+ H/4 lies
  outside [min x, max x] = [21, 43], so x_l, x_r = x_c -+ 26.5.
  Upper body P2 y: 30..62; upper legs P3 y: 64..88; P4 min 88.
  """
  x_l, x_r = 577 / 18 - 26.5, 577 / 18 + 26.5
  b = beta * 106
  return np.array([(x_l, 14, x_r, 120), (x_l, 14, x_r, 20 + b),
                   (x_l, 30 - b, x_r, 62 + b), (x_l, 64 - b, x_r, 88 + b),
                   (x_l, 88 - b, x_r, 120)])


def test_canonical_poses_are_mirror_closed():
  poses = part_boxes.CANONICAL_POSES
  assert poses.shape[1:] == (18, 2) and len(poses) % 2 == 0
  for k in range(0, len(poses), 2):
    mirror = poses[k][keypoints_lib.FLIP_PERMUTATION].copy()
    mirror[:, 0] *= -1
    np.testing.assert_array_equal(poses[k + 1], mirror)
  # Normalised: head top near 0, soles near 1.
  assert poses[..., 1].min() > 0 and poses[..., 1].max() < 1


@pytest.mark.parametrize("beta", [3 / 48, 0.1, 0.0])
def test_hand_computed_boxes(beta):
  config = _config(beta=beta)
  keypoints = _with_confidence(POSE_A)
  expected = _pose_a_boxes(beta)
  np.testing.assert_allclose(
      part_boxes.part_boxes_np(keypoints, IMG_H, IMG_W, config), expected,
      atol=1e-9)
  np.testing.assert_allclose(_tf_boxes(keypoints, config)[0], expected,
                             atol=1e-4)


def test_x_bounds_from_the_joints_when_wider_than_h_over_4():
  # Arms spread: the wrists at x = 0 and 70 lie beyond x_c -+ H/4.
  pose = POSE_A.copy()
  pose[4, 0], pose[7, 0] = 0.0, 70.0
  config = _config()
  boxes = part_boxes.part_boxes_np(_with_confidence(pose), IMG_H, IMG_W,
                                   config)
  # Sum of x: 577 - 21 - 43 + 0 + 70 = 583; x_c = 32.39; x_c -+ 26.5 =
  # 5.89 / 58.89, inside [0, 70].
  np.testing.assert_allclose(boxes[:, 0], 0.0)
  np.testing.assert_allclose(boxes[:, 2], 70.0)
  np.testing.assert_allclose(_tf_boxes(_with_confidence(pose), config)[0],
                             boxes, atol=1e-4)


def test_missing_joints_filled_from_an_exactly_fitting_pose(monkeypatch):
  # One canonical pose, POSE_A normalised: the confident joints fit it
  # exactly (scale 106, shift (32, 14)), so the fill restores POSE_A.
  canonical = (POSE_A - (32.0, 14.0)) / 106.0
  monkeypatch.setattr(part_boxes, "CANONICAL_POSES", canonical[None])
  keypoints = _with_confidence(POSE_A)
  keypoints[[10, 13, 16], 2] = 0.0  # Ankles and right ear missing ...
  keypoints[[10, 13, 16], :2] = 0.0
  keypoints[4] = (0.0, 0.0, 0.05)  # ... the right wrist unreliable.
  config = _config()
  expected = _pose_a_boxes(3 / 48)
  np.testing.assert_allclose(
      part_boxes.part_boxes_np(keypoints, IMG_H, IMG_W, config), expected,
      atol=1e-9)
  np.testing.assert_allclose(_tf_boxes(keypoints, config)[0], expected,
                             atol=1e-3)


def test_least_squares_fill_by_hand(monkeypatch):
  # Canonical joints 0, 1, 2 at (0, 0), (0, 1), (1, 1); the others at
  # (0.5, 2). Confident: (10, 10), (10, 30), (32, 30). Means (1/3, 2/3) and
  # (52/3, 70/3); sum of dQ.dK = 28, sum |dQ|^2 = 4/3: scale 21, shift
  # (52/3 - 7, 70/3 - 14) = (31/3, 28/3); the others at
  # (21 * 0.5 + 31/3, 21 * 2 + 28/3).
  canonical = np.tile([0.5, 2.0], (18, 1))
  canonical[:3] = [(0, 0), (0, 1), (1, 1)]
  monkeypatch.setattr(part_boxes, "CANONICAL_POSES", canonical[None])
  keypoints = np.zeros((18, 3))
  keypoints[:3] = [(10, 10, 0.8), (10, 30, 0.7), (32, 30, 0.9)]
  filled = part_boxes.fill_missing_np(keypoints, 0.1)
  np.testing.assert_allclose(filled[:3], keypoints[:3, :2])
  np.testing.assert_allclose(filled[3:],
                             np.tile([10.5 + 31 / 3, 42 + 28 / 3], (15, 1)))


def test_stripes_by_hand():
  config = _config()  # beta 3/48: 8 px of a 128 px image.
  stripes = np.array([(0, 0, 64, 128), (0, 0, 64, 40), (0, 24, 64, 72),
                      (0, 56, 64, 104), (0, 88, 64, 128)], np.float64)
  np.testing.assert_allclose(
      part_boxes.stripe_boxes(IMG_H, IMG_W, 3 / 48), stripes)
  nothing = np.zeros((18, 3))
  one_joint = np.zeros((18, 3))
  one_joint[1] = (30, 30, 0.9)
  unreliable = _with_confidence(POSE_A, 0.05)  # All below min_confidence.
  flat = _with_confidence(np.stack([np.linspace(10, 50, 18),
                                    np.full(18, 60.0)], 1))  # H = 0.
  cases = [nothing, one_joint, unreliable, flat]
  for keypoints in cases:
    np.testing.assert_allclose(
        part_boxes.part_boxes_np(keypoints, IMG_H, IMG_W, config), stripes)
  np.testing.assert_allclose(_tf_boxes(np.stack(cases), config),
                             np.broadcast_to(stripes, (4, 5, 4)), atol=1e-5)
  # source="stripes" ignores the keypoints.
  stripes_config = _config(source="stripes")
  np.testing.assert_allclose(
      part_boxes.part_boxes_np(_with_confidence(POSE_A), IMG_H, IMG_W,
                               stripes_config), stripes)
  np.testing.assert_allclose(
      _tf_boxes(_with_confidence(POSE_A), stripes_config)[0], stripes,
      atol=1e-5)


def _random_poses(rng, n):
  """Canonical poses, scaled, shifted and jittered, with random missing and
  unreliable joints (a few with no or one joint)."""
  poses = part_boxes.CANONICAL_POSES[rng.integers(0, 10, n)]
  scale = rng.uniform(80, 130, n)[:, None, None]
  shift = np.stack([rng.uniform(20, 44, n), rng.uniform(-5, 10, n)], 1)
  xy = poses * scale + shift[:, None] + rng.normal(0, 2, (n, 18, 2))
  conf = rng.uniform(0.2, 1.0, (n, 18))
  conf[rng.random((n, 18)) < 0.25] = 0.0
  conf[rng.random((n, 18)) < 0.1] = 0.05
  conf[0] = 0.0
  conf[1] = 0.0
  conf[1, 1] = 0.9
  # Only nose and neck: the front and back poses fit equally well.
  conf[2] = 0.0
  conf[2, :2] = 0.9
  xy[2, :2, 0] = 32.0
  return np.concatenate([xy, conf[..., None]], axis=-1)


def test_tensorflow_matches_numpy_on_random_poses():
  rng = np.random.default_rng(0)
  keypoints = _random_poses(rng, 40)
  for beta in (3 / 48, 0.1):
    config = _config(beta=beta)
    expected = np.stack([part_boxes.part_boxes_np(k, IMG_H, IMG_W, config)
                         for k in keypoints])
    np.testing.assert_allclose(_tf_boxes(keypoints, config), expected,
                               atol=2e-3, rtol=1e-5)


def test_mirrored_keypoints_give_mirrored_boxes():
  rng = np.random.default_rng(1)
  keypoints = _random_poses(rng, 40)
  mirrored = keypoints_lib.mirror_keypoints(keypoints, IMG_W)
  config = _config()
  for k, m in zip(keypoints, mirrored):
    np.testing.assert_allclose(
        part_boxes.part_boxes_np(m, IMG_H, IMG_W, config),
        part_boxes.mirror_boxes(
            part_boxes.part_boxes_np(k, IMG_H, IMG_W, config), IMG_W),
        atol=1e-6)
  np.testing.assert_allclose(
      _tf_boxes(mirrored, config),
      part_boxes.mirror_boxes(_tf_boxes(keypoints, config), IMG_W), atol=2e-3)


def _ramp(h, w):
  """(h, w, 3) image linear in the pixel centres: 2x + 3y + 1, x, y."""
  y, x = np.mgrid[0:h, 0:w] + 0.5
  return np.stack([2 * x + 3 * y + 1, x, y], -1).astype(np.float32)


def test_crops_sample_the_box_at_pixel_centres():
  config = _config(height=6, width=8)
  image = _ramp(IMG_H, IMG_W)
  boxes = np.array([[(0, 0, IMG_W, IMG_H), (4.5, 10, 60.5, 22),
                     (8, 30, 40, 54.5), (0, 60, 64, 100), (10, 90, 30, 120)]],
                   np.float32)
  fill = (-1.0, -2.0, -3.0)
  whole, parts = part_boxes.crop_parts_tf(tf.constant(image[None]),
                                          tf.constant(boxes), config, fill)
  assert whole.shape == (1, IMG_H, IMG_W, 3)
  assert parts.shape == (1, 4, 6, 8, 3)
  # The whole-image box reproduces the image.
  np.testing.assert_allclose(whole[0], image, atol=1e-3)
  for part, (x1, y1, x2, y2) in zip(parts.numpy()[0], boxes[0, 1:]):
    xs = x1 + (np.arange(8) + 0.5) * (x2 - x1) / 8
    ys = y1 + (np.arange(6) + 0.5) * (y2 - y1) / 6
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    # Bilinear sampling is exact on a linear image (inside the pixel
    # centres' hull).
    np.testing.assert_allclose(part, np.stack([2 * xx + 3 * yy + 1, xx, yy],
                                              -1), atol=2e-3)
  # Outside the image: the fill colour.
  outside = np.array([[(-40, -40, -20, -20)] * 5], np.float32)
  _, parts = part_boxes.crop_parts_tf(tf.constant(image[None]),
                                      tf.constant(outside), config, fill)
  np.testing.assert_allclose(parts.numpy(), np.broadcast_to(fill, parts.shape))


def test_crop_of_the_mirrored_box_is_the_mirrored_crop():
  rng = np.random.default_rng(2)
  config = _config(height=12, width=16)
  image = rng.normal(size=(1, IMG_H, IMG_W, 3)).astype(np.float32)
  boxes = part_boxes.part_boxes_np(_with_confidence(POSE_A), IMG_H, IMG_W,
                                   config)[None].astype(np.float32)
  whole, parts = part_boxes.crop_parts_tf(tf.constant(image),
                                          tf.constant(boxes), config)
  whole_m, parts_m = part_boxes.crop_parts_tf(
      tf.constant(image[:, :, ::-1].copy()),
      tf.constant(part_boxes.mirror_boxes(boxes, IMG_W).astype(np.float32)),
      config)
  np.testing.assert_allclose(whole_m.numpy(), whole.numpy()[:, :, ::-1],
                             atol=1e-4)
  np.testing.assert_allclose(parts_m.numpy(), parts.numpy()[..., ::-1, :],
                             atol=1e-4)


def test_to_box_frame():
  keypoints = _with_confidence(POSE_A)
  box = (5.0, 14.0, 59.0, 122.0)  # 54 x 108 -> 32 x 64 (height, width).
  out = part_boxes.to_box_frame(keypoints, box, 32, 64)
  np.testing.assert_allclose(out[0], ((32 - 5) * 64 / 54, (20 - 14) * 32 / 108,
                                      0.9))
  got = part_boxes.to_box_frame_tf(tf.constant(keypoints[None], tf.float32),
                                   tf.constant([box], tf.float32), 32, 64)
  np.testing.assert_allclose(got.numpy()[0], out, rtol=1e-5)


def test_bad_part_configs():
  with pytest.raises(ValueError, match="source"):
    _config(source="boxes")
  with pytest.raises(ValueError, match="beta"):
    _config(beta=0.7)
  parts = common.parts_config()
  parts.joint_sets.head = ("nose", "chin")
  with pytest.raises(ValueError, match="chin"):
    part_boxes.PartConfig.from_config(parts)
