"""Keypoints as data: the file format and loader, the flip table, keypoints
through the augmentation (against NumPy), the crop option, the pose fields of
the pipelines, and the synthetic set's keypoints."""

import dataclasses
import hashlib
import io
import json
import logging
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from configs import common
from reidjax.data import datasets, keypoints as keypoints_lib, part_boxes
from reidjax.data import index, pipeline, synthetic, transforms
from reidjax.data.index import ImageSplit
from reidjax.data.sampler import build_sampler
from reidjax.data.tensorflow_cpu import tf
from reidjax.models import interface
# The video pipeline tests' clip split fixture ("split") and train helper.
from tests.data.test_video_pipeline import _train as _video_train
# The video test's `split` fixture: 13 tracklets of coloured frames.
from tests.data.test_video_pipeline import _split  # noqa: F401  pylint: disable=unused-import

_MEAN = np.array([0.485, 0.456, 0.406])
_STD = np.array([0.229, 0.224, 0.225])


def _random_keypoints(rng, n, h, w):
  xy = rng.uniform([-5, -5], [w + 5, h + 5], (n, 18, 2))
  conf = rng.uniform(0.0, 1.0, (n, 18, 1))
  conf[rng.random((n, 18, 1)) < 0.2] = 0.0
  return np.concatenate([xy, conf], -1).astype(np.float32)


# ------------------------------------------------------------ file format --


def test_flip_permutation():
  perm = keypoints_lib.FLIP_PERMUTATION
  np.testing.assert_array_equal(perm[perm], np.arange(18))  # An involution.
  names = keypoints_lib.COCO18_NAMES
  assert names[perm[0]] == "nose" and names[perm[1]] == "neck"
  assert names[perm[2]] == "left_shoulder" and names[perm[10]] == "left_ankle"
  assert names[perm[15]] == "right_eye" and names[perm[17]] == "right_ear"
  kp = _random_keypoints(np.random.default_rng(0), 3, 20, 10)
  mirrored = keypoints_lib.mirror_keypoints(kp, 10)
  np.testing.assert_allclose(mirrored[:, 5, 0], 10 - kp[:, 2, 0])
  np.testing.assert_allclose(keypoints_lib.mirror_keypoints(mirrored, 10), kp,
                             atol=1e-5)
  tf_mirrored = transforms.mirror_keypoints(tf.constant(kp), 10.0).numpy()
  np.testing.assert_allclose(tf_mirrored, mirrored, atol=1e-5)


def test_file_round_trip_and_matching(tmp_path, caplog):
  rng = np.random.default_rng(1)
  kp = _random_keypoints(rng, 3, 64, 32)
  path = str(tmp_path / "train.json")
  keypoints_lib.write_keypoints_file(
      path, {"a.jpg": kp[0], "b.jpg": kp[1], "junk.jpg": kp[2]},
      generator="test")
  content = json.load(open(path))
  assert content["format"] == "reidjax-keypoints"
  assert content["joints"] == "coco18" and content["generator"] == "test"
  # An empty list is "no person".
  content["keypoints"]["c.jpg"] = []
  json.dump(content, open(path, "w"))
  with caplog.at_level(logging.WARNING):
    got = keypoints_lib.load_keypoints(
        path, ["/data/x/b.jpg", "/data/x/a.jpg", "/data/y/c.jpg"])
  assert got.shape == (3, 18, 3) and got.dtype == np.float32
  expected = np.where(kp[..., 2:] > 0, kp, 0.0)  # Missing joints -> zeros.
  np.testing.assert_allclose(got[0], expected[1], atol=1e-3)
  np.testing.assert_allclose(got[1], expected[0], atol=1e-3)
  np.testing.assert_array_equal(got[2], 0.0)
  # Extra entries are named and ignored.
  assert "1 images the split does not have ('junk.jpg')" in caplog.text


def test_missing_images_are_an_error_naming_a_few(tmp_path, caplog):
  path = str(tmp_path / "query.json")
  keypoints_lib.write_keypoints_file(path, {"a.jpg": np.ones((18, 3))})
  paths = ["a.jpg"] + [f"m{i}.jpg" for i in range(8)]
  with pytest.raises(ValueError, match=r"8 of the split's 9 images have no "
                     r"keypoints .*'m0.jpg', 'm1.jpg', 'm2.jpg', 'm3.jpg', "
                     r"'m4.jpg' and 3 more.*unmatched='warn'"):
    keypoints_lib.load_keypoints(path, paths)
  with caplog.at_level(logging.WARNING):
    got = keypoints_lib.load_keypoints(path, paths, unmatched="warn")
  assert "8 of the split's 9 images" in caplog.text
  np.testing.assert_array_equal(got[1:], 0.0)
  np.testing.assert_array_equal(got[0], 1.0)
  with pytest.raises(ValueError, match="unique"):
    keypoints_lib.load_keypoints(path, ["x/a.jpg", "y/a.jpg"])
  with pytest.raises(ValueError, match="unmatched"):
    keypoints_lib.load_keypoints(path, ["a.jpg"], unmatched="ignore")


@pytest.mark.parametrize("content, match", [
    ({"keypoints": {}}, "not a reidjax keypoints file"),
    ({"format": "reidjax-keypoints", "joints": "body25", "keypoints": {}},
     "not a reidjax keypoints file"),
    ({"format": "reidjax-keypoints", "joints": "coco18",
      "keypoints": {"a.jpg": [[1, 2, 0.5]] * 17}}, "'a.jpg' is not 18 x"),
    ({"format": "reidjax-keypoints", "joints": "coco18",
      "keypoints": {"a.jpg": [[1, 2, 50]] * 18}}, "outside \\[0, 1\\]"),
])
def test_bad_files(tmp_path, content, match):
  path = tmp_path / "k.json"
  path.write_text(json.dumps(content))
  with pytest.raises(ValueError, match=match):
    keypoints_lib.read_keypoints_file(str(path))


def test_missing_file_says_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match="stripes"):
    keypoints_lib.read_keypoints_file(str(tmp_path / "none.json"))


def test_coco17_conversion():
  coco17 = np.arange(51, dtype=np.float32).reshape(17, 3) / 60.0
  out = keypoints_lib.coco17_to_coco18(coco17)
  np.testing.assert_array_equal(out[0], coco17[0])  # nose
  np.testing.assert_array_equal(out[2], coco17[6])  # right shoulder
  np.testing.assert_array_equal(out[5], coco17[5])  # left shoulder
  np.testing.assert_array_equal(out[13], coco17[15])  # left ankle
  np.testing.assert_array_equal(out[14], coco17[2])  # right eye
  np.testing.assert_array_equal(out[17], coco17[3])  # left ear
  np.testing.assert_allclose(out[1], [(coco17[5, 0] + coco17[6, 0]) / 2,
                                      (coco17[5, 1] + coco17[6, 1]) / 2,
                                      coco17[5, 2]])
  with pytest.raises(ValueError, match="17, 3"):
    keypoints_lib.coco17_to_coco18(np.zeros((18, 3)))


def test_joint_sets_by_name():
  assert keypoints_lib.joint_indices("all") == tuple(range(18))
  assert keypoints_lib.joint_indices(("neck", "left_ear")) == (1, 17)
  with pytest.raises(ValueError, match="'hand'"):
    keypoints_lib.joint_indices(("neck", "hand"))


# ------------------------------------------------ keypoints through augment --


def _png(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return tf.constant(buf.getvalue())


def _draws(config, seed):
  """The augmentation's random draws, from transforms' own draw functions."""
  flip_seed, crop_seed, _ = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=3))
  flip = bool(transforms.flip_draw(flip_seed)) if config.flip else False
  if config.crop == "pad":
    dy, dx = transforms.pad_crop_offset(config.pad, crop_seed)
  else:
    dy, dx = transforms.enlarge_crop_offset(config.height, config.width,
                                            crop_seed)
  return flip, int(dy), int(dx)


def _numpy_keypoints(kp, flip, sx, sy, dx, dy, w0):
  """Independent NumPy: mirror + swap, scale, shift."""
  kp = kp.astype(np.float64).copy()
  if flip:
    kp = kp[keypoints_lib.FLIP_PERMUTATION]
    kp[:, 0] = w0 - kp[:, 0]
  kp[:, 0] = kp[:, 0] * sx - dx
  kp[:, 1] = kp[:, 1] * sy - dy
  return kp


def test_pad_crop_keypoints_match_numpy():
  h, w, pad = 32, 16, 3
  rng = np.random.default_rng(2)
  image = rng.integers(0, 256, (h, w, 3), np.uint8)
  kp = _random_keypoints(rng, 1, h, w)[0]
  config = transforms.AugmentConfig(h, w, pad=pad, random_erasing=0.0)
  seen_flip = set()
  for i in range(12):
    seed = transforms.image_seed(7, i, 3)
    out_image, out_kp = transforms.preprocess_train_keypoints(
        _png(image), tf.constant(kp), config, seed)
    flip, dy, dx = _draws(config, seed)
    seen_flip.add(flip)
    # The image is the same draw: flip, zero-pad, crop at (pad + dy, pad + dx).
    ref = image[:, ::-1] if flip else image
    ref = np.pad(ref / 255.0, [(pad, pad), (pad, pad), (0, 0)])
    ref = ref[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
    np.testing.assert_allclose(out_image.numpy(), (ref - _MEAN) / _STD,
                               atol=1e-5)
    np.testing.assert_allclose(
        out_kp.numpy(), _numpy_keypoints(kp, flip, 1.0, 1.0, dx, dy, w),
        atol=1e-4)
    # And the image is exactly preprocess_train's.
    np.testing.assert_array_equal(
        out_image.numpy(),
        transforms.preprocess_train(_png(image), config, seed).numpy())
  assert seen_flip == {True, False}


def test_preprocess_train_is_still_the_old_composition():
  # The keypoint-aware refactor keeps the image recipe and its draws:
  # split the seed in 3, flip, resize, pad + crop, normalise, erase.
  rng = np.random.default_rng(8)
  data = _png(rng.integers(0, 256, (40, 20, 3), np.uint8))
  config = transforms.AugmentConfig(32, 16, pad=3, random_erasing=0.7)
  for i in range(4):
    seed = transforms.image_seed(4, i, 2)
    flip_seed, crop_seed, erase_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=3))
    image = transforms.random_flip(transforms.decode_image(data), flip_seed)
    image = transforms.pad_and_random_crop(
        transforms.resize(image, 32, 16), 3, crop_seed)
    image = transforms.random_erasing(transforms.normalize(image), 0.7,
                                      erase_seed)
    np.testing.assert_array_equal(
        transforms.preprocess_train(data, config, seed).numpy(),
        image.numpy())


def test_resize_scales_keypoints():
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, (48, 20, 3), np.uint8)
  kp = _random_keypoints(rng, 1, 48, 20)[0]
  config = transforms.AugmentConfig(32, 16, pad=2)
  for i in range(6):
    seed = transforms.image_seed(1, i, 0)
    _, out_kp = transforms.preprocess_train_keypoints(
        _png(image), tf.constant(kp), config, seed)
    flip, dy, dx = _draws(config, seed)
    np.testing.assert_allclose(
        out_kp.numpy(),
        _numpy_keypoints(kp, flip, 16 / 20, 32 / 48, dx, dy, 20), atol=1e-4)
  _, eval_kp = transforms.preprocess_eval_keypoints(_png(image),
                                                    tf.constant(kp), 32, 16)
  np.testing.assert_allclose(
      eval_kp.numpy(), _numpy_keypoints(kp, False, 16 / 20, 32 / 48, 0, 0, 20),
      atol=1e-4)


def test_enlarge_crop_and_its_keypoints_match_numpy():
  h, w = 32, 16
  big_h, big_w = transforms.enlarged_size(h, w)
  assert (big_h, big_w) == (36, 18)  # round(9/8 x (32, 16)).
  rng = np.random.default_rng(4)
  image = rng.integers(0, 256, (40, 24, 3), np.uint8)
  kp = _random_keypoints(rng, 1, 40, 24)[0]
  config = transforms.AugmentConfig(h, w, crop="enlarge", random_erasing=0.0)
  offsets = set()
  for i in range(60):
    seed = transforms.image_seed(2, i, 1)
    out_image, out_kp = transforms.preprocess_train_keypoints(
        _png(image), tf.constant(kp), config, seed)
    flip, oy, ox = _draws(config, seed)
    offsets.add((oy, ox))
    source = image[:, ::-1] if flip else image
    big = transforms.resize(tf.constant(np.ascontiguousarray(source)), big_h,
                            big_w).numpy()
    ref = (big[oy:oy + h, ox:ox + w] - _MEAN) / _STD
    np.testing.assert_allclose(out_image.numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(
        out_kp.numpy(),
        _numpy_keypoints(kp, flip, big_w / 24, big_h / 40, ox, oy, 24),
        atol=1e-4)
  # Uniform over the valid positions [0, 4] x [0, 2]: all 15 occur.
  assert offsets == {(y, x) for y in range(5) for x in range(3)}


def test_unknown_crop_is_a_clear_error():
  with pytest.raises(ValueError, match=r"data.crop must be one of .*'zoom'"):
    transforms.AugmentConfig(8, 4, crop="zoom")
  assert common.data_config("market1501").crop == "pad"


def test_clip_frames_share_the_enlarge_crop(split):
  # ``split``: the video tests' tracklets (left half coloured, right black).
  augment = transforms.AugmentConfig(32, 16, flip=False, crop="enlarge",
                                     random_erasing=0.0)
  images = next(_video_train(split, augment=augment))["images"]
  # Left half coloured, right half black: the colour edge moves with ox.
  rgb = images * _STD + _MEAN
  edge = (rgb.max(-1) > 0.05).sum(-1).mean(-1)  # (b, n) coloured width.
  for clip in edge:
    np.testing.assert_allclose(clip, clip[0], atol=0.2)
  assert len({round(float(e), 1) for e in edge[:, 0]}) > 1


# --------------------------------------------------------- pipeline fields --


def _split_with_keypoints(tmp_path, n=6, h=64, w=32):
  rng = np.random.default_rng(5)
  paths, table = [], {}
  for i in range(n):
    image = rng.integers(0, 256, (h, w, 3), np.uint8)
    path = str(tmp_path / f"{i // 2:04d}_c{i % 2}_{i:03d}.png")
    Image.fromarray(image).save(path)
    paths.append(path)
    pose = part_boxes.CANONICAL_POSES[i % 10] * (h - 8) + (w / 2, 4)
    table[os.path.basename(path)] = np.concatenate(
        [pose, np.full((18, 1), 0.9)], 1)
  split = ImageSplit(tuple(paths), np.repeat(np.arange(n // 2), 2).astype(
      np.int32), (np.arange(n) % 2).astype(np.int32))
  keypoints = keypoints_lib.match_keypoints(table, paths, source="test")
  return split, keypoints


def _parts_config(**overrides):
  parts = common.parts_config()
  parts.height, parts.width = 8, 16
  for k, v in overrides.items():
    parts[k] = v
  return part_boxes.PartConfig.from_config(parts)


def test_eval_parts_match_numpy_boxes_and_crops(tmp_path):
  h, w = 64, 32
  split, keypoints = _split_with_keypoints(tmp_path)
  parts = _parts_config()
  batch = next(pipeline.eval_batches(
      split, batch_size=4, height=h, width=w,
      fields=("images", "parts", "keypoints"), keypoints=keypoints,
      parts=parts))
  assert batch["parts"].shape == (4, 4, 8, 16, 3)
  plain = next(pipeline.eval_batches(split, batch_size=4, height=h, width=w))
  assert set(plain) == {"images", "pids", "camids", "mask", "index"}
  for j in range(4):
    boxes = part_boxes.part_boxes_np(keypoints[j], h, w, parts)
    whole, crops = part_boxes.crop_parts_tf(
        tf.constant(plain["images"][j:j + 1]),
        tf.constant(boxes[None], tf.float32), parts,
        transforms.NORMALIZED_BLACK)
    # Float32 boxes differ by ~1e-3 px; the noise image's gradient is large.
    np.testing.assert_allclose(batch["images"][j], whole[0], atol=3e-2)
    np.testing.assert_allclose(batch["parts"][j], crops[0], atol=3e-2)
    # Keypoints in the delivered (R0) image's pixels.
    np.testing.assert_allclose(
        batch["keypoints"][j],
        part_boxes.to_box_frame(keypoints[j], boxes[0], h, w), atol=2e-2)


def test_flip_tta_parts_are_the_parts_of_the_mirrored_image(tmp_path):
  # Flip test-time augmentation mirrors "parts" like images: right only if
  # the parts of the mirrored image (with mirrored keypoints) are the
  # mirrored parts.
  h, w = 64, 32
  split, keypoints = _split_with_keypoints(tmp_path)
  mirrored_paths = []
  for p in split.paths:
    q = p.replace(".png", "_m.png")
    Image.fromarray(np.asarray(Image.open(p))[:, ::-1]).save(q)
    mirrored_paths.append(q)
  mirrored = ImageSplit(tuple(mirrored_paths), split.pids, split.camids)
  parts = _parts_config()
  args = dict(batch_size=6, height=h, width=w, fields=("images", "parts"),
              parts=parts)
  a = next(pipeline.eval_batches(split, keypoints=keypoints, **args))
  b = next(pipeline.eval_batches(
      mirrored, keypoints=keypoints_lib.mirror_keypoints(keypoints, w)
      .astype(np.float32), **args))
  assert "parts" in interface.IMAGE_FIELDS
  np.testing.assert_allclose(b["images"], a["images"][:, :, ::-1], atol=3e-2)
  np.testing.assert_allclose(b["parts"], a["parts"][..., ::-1, :], atol=3e-2)


def test_train_fields_and_unchanged_images(tmp_path):
  h, w = 64, 32
  split, keypoints = _split_with_keypoints(tmp_path)
  augment = transforms.AugmentConfig(h, w, pad=4)

  def batches(**kwargs):
    sampler = build_sampler(split.pids, kind="pk", epoch="identities",
                            num_identities=2, num_instances=2, seed=3)
    return next(pipeline.train_batches(split, augment=augment, seed=9,
                                       sampler=sampler, **kwargs))

  plain = batches()
  with_kp = batches(fields=("images", "keypoints"), keypoints=keypoints)
  # Keypoints alone leave the images exactly as they were.
  np.testing.assert_array_equal(with_kp["images"], plain["images"])
  assert with_kp["keypoints"].shape == (4, 18, 3)
  stripes = batches(fields=("images", "parts"),
                    parts=_parts_config(source="stripes"))
  # Stripes: R0 is the whole image, so the images stay (up to resampling).
  np.testing.assert_allclose(stripes["images"], plain["images"], atol=1e-4)
  assert stripes["parts"].shape == (4, 4, 8, 16, 3) and "keypoints" not in \
      stripes
  posed = batches(fields=("images", "parts", "keypoints"),
                  keypoints=keypoints, parts=_parts_config())
  # Delivered keypoints: the augmented ones, moved into R0's pixels.
  boxes = part_boxes.part_boxes_tf(with_kp["keypoints"], h, w,
                                   _parts_config()).numpy()
  np.testing.assert_allclose(
      posed["keypoints"],
      np.where(with_kp["keypoints"][..., 2:] > 0,
               part_boxes.to_box_frame(with_kp["keypoints"], boxes[:, 0].T,
                                       h, w), 0.0), atol=1e-3)
  with pytest.raises(ValueError, match="keypoints"):
    batches(fields=("images", "parts"), parts=_parts_config())
  with pytest.raises(ValueError, match="no PartConfig"):
    batches(fields=("images", "parts"), keypoints=keypoints)


def test_flip_tta_refuses_keypoints():
  interface.check_flip(("images", "parts"), True)
  interface.check_flip(("images", "keypoints"), False)
  with pytest.raises(ValueError, match="eval.flip=False"):
    interface.check_flip(("images", "keypoints"), True)


# --------------------------------------------------------------- synthetic --

TINY = dict(num_train_ids=3, num_test_ids=3, num_cameras=3, images_per_id=6,
            seed=5, image_size=(64, 32), num_distractors=3, num_junk=2)


def test_synthetic_images_unchanged_by_keypoints():
  # sha256 of the tiny set's plan and renders, taken with the writer as it
  # was before keypoints existed: the keypoints' own random stream leaves
  # every image as it was.
  params = dict(version=1, **{k: (list(v) if k == "image_size" else v)
                              for k, v in TINY.items()})
  cameras = synthetic.make_cameras(5, 3)
  digest = hashlib.sha256()
  for item in synthetic._plan(params):
    digest.update(item.split.encode())
    digest.update(item.name.encode())
    digest.update(synthetic.render(item.identity, cameras[item.camera],
                                   item.view, (64, 32)).tobytes())
  assert digest.hexdigest() == (
      "707fcd9d2ac2c023608281098901d9d71e1038d0e2cd7f6c9396e0d60d18180e")


def test_synthetic_joints_follow_the_rendered_body():
  rng = np.random.default_rng(6)
  # No bags: a shoulder bag may hang over a wrist.
  ident = dataclasses.replace(synthetic.sample_identity(rng),
                              shoulder_bag=None, backpack=None)
  camera = synthetic.make_cameras(0, 2)[0]
  view = synthetic.View(scale=1.0, dx=0.05, phase=1.0, stride=0.3)
  joints = synthetic.person_joints(ident, view, (128, 64))
  # A flip mirrors the person about its centre x = (0.5 + dx) * 64.
  flipped = synthetic.person_joints(
      ident, synthetic.View(scale=1.0, dx=0.05, phase=1.0, stride=0.3,
                            flip=True), (128, 64))
  np.testing.assert_allclose(
      flipped, keypoints_lib.mirror_keypoints(
          np.concatenate([joints, np.ones((18, 1))], 1), 2 * 0.55 * 64)[:, :2],
      atol=1e-9)
  # Front view: the person's right shoulder is on the image's left.
  assert joints[2, 0] < joints[5, 0]
  back = synthetic.person_joints(ident, synthetic.View(back=True), (128, 64))
  assert back[2, 0] > back[5, 0]
  # The joints sit on skin: a different skin colour changes the pixels at
  # the nose and wrists, not at the image corner.
  other = synthetic.Identity(**{**ident.__dict__, "skin": (0.1, 0.9, 0.1)})
  a = synthetic.render(ident, camera, view, (128, 64)).astype(int)
  b = synthetic.render(other, camera, view, (128, 64)).astype(int)
  for j in (0, 4, 7):
    x, y = joints[j].astype(int)
    assert np.abs(a[y, x] - b[y, x]).max() > 30, keypoints_lib.COCO18_NAMES[j]
  np.testing.assert_array_equal(a[0, 0], b[0, 0])


def test_synthetic_keypoints_written_and_added_to_old_sets(tmp_path,
                                                           monkeypatch):
  root = str(tmp_path / "syn")
  synthetic.write_synthetic_market(root, **TINY)
  ds = datasets.layouts.parse_market1501(root)
  cfg = ml_collections.ConfigDict(dict(name="synthetic", root=root,
                                       parts=common.parts_config()))
  tables = {}
  for name, split in (("train", ds.train), ("query", ds.query),
                      ("gallery", ds.gallery)):
    tables[name] = keypoints_lib.load_keypoints(
        keypoints_lib.split_keypoints_path(cfg, name), split.paths)
  kp = np.concatenate(list(tables.values()))
  conf = kp[..., 2]
  assert ((conf > 0) & (conf < 0.1)).any()  # Unreliable joints ...
  assert (conf == 0).mean() > 0.05  # ... missing ones ...
  assert (conf == 0).all(1).any()  # ... and clutter without a person.
  # Noisy, but near the rendered geometry for a plain view.
  plan = [i for i in synthetic._plan(dict(version=1, **{
      k: (list(v) if k == "image_size" else v) for k, v in TINY.items()}))
          if i.split == "bounding_box_train"]
  item = plan[0]
  exact = synthetic.person_joints(item.identity, item.view, (64, 32))
  row = tables["train"][ds.train.paths.index(
      os.path.join(root, "bounding_box_train", item.name))]
  seen = row[:, 2] >= 0.1
  assert np.abs(row[seen, :2] - exact[seen]).max() < 0.15 * 64

  # A set written before the keypoints existed gets them on its next use,
  # without any image being rewritten.
  images = {p: open(p, "rb").read() for p in ds.train.paths}
  before = json.load(open(os.path.join(root, "keypoints", "train.json")))
  for name in os.listdir(os.path.join(root, "keypoints")):
    os.remove(os.path.join(root, "keypoints", name))
  os.rmdir(os.path.join(root, "keypoints"))

  def fail(*a, **k):
    raise AssertionError("must not rewrite the images")

  monkeypatch.setattr(synthetic, "_write", fail)
  synthetic.write_synthetic_market(root, **TINY)
  assert json.load(open(os.path.join(root, "keypoints", "train.json"))) == \
      before
  assert {p: open(p, "rb").read() for p in ds.train.paths} == images


def test_pose_field_inputs_from_the_config(tmp_path):
  cfg = common.data_config("synthetic")
  cfg.root = str(tmp_path / "syn")
  cfg.synthetic = ml_collections.ConfigDict(
      {k: v for k, v in TINY.items() if k != "image_size"})
  ds, _ = datasets.load_data(cfg)
  # No pose fields: nothing is read, even without a parts section.
  assert pipeline.pose_field_inputs(cfg, ds, ("images",))["train"] == {
      "fields": ("images",)}
  with pytest.raises(ValueError, match="parts_config"):
    pipeline.pose_field_inputs(cfg, ds, ("images", "parts"))
  cfg.parts = common.parts_config()
  pose = pipeline.pose_field_inputs(cfg, ds, ("images", "parts"))
  assert pose["query"]["keypoints"].shape == (len(ds.query), 18, 3)
  assert pose["gallery"]["parts"].height == 96
  cfg.parts.keypoints_dir = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="keypoints_dir"):
    pipeline.pose_field_inputs(cfg, ds, ("images", "parts"))
  cfg.parts.source = "stripes"  # No keypoints needed.
  assert pipeline.pose_field_inputs(
      cfg, ds, ("images", "parts"))["train"]["keypoints"] is None
  video = index.VideoDataset(
      "v", "", *[index.VideoSplit((("a.jpg",),), np.zeros(1, np.int32),
                                  np.zeros(1, np.int32))] * 3)
  with pytest.raises(ValueError, match="video"):
    pipeline.pose_field_inputs(cfg, video, ("images", "parts"))
