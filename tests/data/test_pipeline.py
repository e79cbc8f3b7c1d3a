"""Tests for the tf.data train / eval pipelines (tiny JPEGs in tmp_path)."""

import itertools
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from reidjax.data import pipeline
from reidjax.data.index import ImageSplit
from reidjax.data.sampler import build_sampler
from reidjax.data.transforms import AugmentConfig

H, W = 32, 16
NUM_IDS = 8


def _colour(i):
  """A distinct flat RGB colour for image i (survives JPEG almost exactly)."""
  return np.array([(37 * i) % 200 + 20, (91 * i) % 200 + 20,
                   (53 * i) % 200 + 20], np.uint8)


@pytest.fixture(name="split")
def _split(tmp_path):
  return make_split(tmp_path)


def make_split(tmp_path):
  """8 ids with 1..5 images each; image i is a flat _colour(i) 32x16 JPEG."""
  counts = [1, 2, 3, 4, 5, 3, 2, 4]
  pids = np.repeat(np.arange(NUM_IDS), counts).astype(np.int32)
  camids = (np.arange(pids.size) % 3).astype(np.int32)
  paths = []
  for i, pid in enumerate(pids):
    path = os.path.join(tmp_path, f"{pid:04d}_c{camids[i]}_{i:03d}.jpg")
    Image.fromarray(np.broadcast_to(_colour(i), (H, W, 3)).copy()).save(
        path, quality=95)
    paths.append(path)
  return ImageSplit(tuple(paths), pids, camids)


def _image_ids(images):
  """Recovers which image each normalised batch entry shows, by colour."""
  mean = np.array([0.485, 0.456, 0.406])
  std = np.array([0.229, 0.224, 0.225])
  rgb = (images.mean(axis=(1, 2)) * std + mean) * 255
  table = np.stack([_colour(i) for i in range(64)]).astype(np.float64)
  dist = np.abs(rgb[:, None] - table[None]).max(-1)
  assert (dist.min(1) < 3).all()
  return dist.argmin(1)


def _sampler(split, kind="pk", epoch="identities", seed=11, **process):
  """P = 4 x K = 2 (or B = 8 random) over ``split``."""
  return build_sampler(split.pids, kind=kind, epoch=epoch, num_identities=4,
                      num_instances=2, seed=seed, **process)


def _train(split, kind="pk", epoch="identities", process_index=0,
           process_count=1, **kwargs):
  # Most tests pin the "identities" epoch: they rely on an identity being
  # in every epoch (see test_train_corrupt_jpeg_error_names_the_file).
  args = dict(augment=AugmentConfig(H, W, pad=2), seed=11)
  args.update(kwargs)
  args["sampler"] = _sampler(split, kind, epoch, args["seed"],
                             process_index=process_index,
                             process_count=process_count)
  return pipeline.train_batches(split, **args)


def test_train_shapes_and_dtypes(split):
  batch = next(_train(split, augment=AugmentConfig(64, 32)))
  assert set(batch) == {"images", "pids", "camids"}
  assert batch["images"].shape == (8, 64, 32, 3)
  assert batch["images"].dtype == np.float32
  assert batch["pids"].shape == batch["camids"].shape == (8,)
  assert batch["pids"].dtype == batch["camids"].dtype == np.int32
  assert np.isfinite(batch["images"]).all()


@pytest.mark.parametrize("kind, epoch", [("pk", "identities"),
                                         ("pk", "images"),
                                         ("random", "images")])
def test_train_batches_follow_the_sampler(split, kind, epoch):
  no_aug = AugmentConfig(H, W, flip=False, pad=0, random_erasing=0.0)
  sampler = _sampler(split, kind, epoch)
  # 5 steps cross an epoch boundary for every kind: 8 ids // P; chunks of
  # K = 2 (1+1+1+2+2+1+1+2 = 11) // P; 24 images // 8.
  assert sampler.steps_per_epoch == {"identities": 2, "images": 2,
                                     "random": 3}[kind if kind == "random"
                                                  else epoch]
  batches = itertools.islice(_train(split, kind, epoch, augment=no_aug), 5)
  for step, batch in enumerate(batches):
    indices = sampler.global_batch(step)
    np.testing.assert_array_equal(batch["pids"], split.pids[indices])
    np.testing.assert_array_equal(batch["camids"], split.camids[indices])
    # The pixels are those of the sampled files, in order.
    np.testing.assert_array_equal(_image_ids(batch["images"]), indices)
    if kind == "pk":
      groups = batch["pids"].reshape(4, 2)
      assert (groups == groups[:, :1]).all()
      assert np.unique(groups[:, 0]).size == 4


def test_train_rejects_a_sampler_of_another_split(split):
  other = build_sampler(split.pids[:-1], kind="pk", epoch="images",
                       num_identities=4, num_instances=2, seed=0)
  with pytest.raises(ValueError, match=r"built for 23 items.*has 24"):
    pipeline.train_batches(split, sampler=other, augment=AugmentConfig(H, W),
                           seed=0)
  # process_index / process_count may be passed (train.py passes them to
  # every pipeline), but must agree with the sampler's slice.
  half = _sampler(split, process_index=1, process_count=2)
  with pytest.raises(ValueError, match=r"\(0, 2\) differ.*\(1, 2\)"):
    pipeline.train_batches(split, sampler=half, augment=AugmentConfig(H, W),
                           seed=0, process_index=0, process_count=2)
  agreeing = pipeline.train_batches(split, sampler=half, seed=11,
                                    augment=AugmentConfig(H, W, pad=2),
                                    process_index=1, process_count=2)
  np.testing.assert_array_equal(
      next(agreeing)["images"],
      next(_train(split, process_index=1, process_count=2))["images"])


@pytest.mark.parametrize("kind, epoch", [("pk", "identities"),
                                         ("pk", "images"),
                                         ("random", "images")])
def test_train_deterministic_and_resumable(split, kind, epoch):
  first = list(itertools.islice(_train(split, kind, epoch), 4))
  again = list(itertools.islice(_train(split, kind, epoch), 4))
  resumed = list(itertools.islice(_train(split, kind, epoch, start_step=2),
                                  2))
  for x, y in zip(first, again, strict=True):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  for x, y in zip(first[2:], resumed, strict=True):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  other = next(_train(split, kind, epoch, seed=12))
  assert not np.array_equal(first[0]["images"], other["images"])


def test_train_augmentation_is_active(split):
  images = next(_train(split, augment=AugmentConfig(H, W, pad=4,
                                                    random_erasing=1.0)))
  images = images["images"]
  # Every image is erased (zeros) and most show padding (-mean/std border).
  assert ((images == 0).all(-1).reshape(8, -1).any(1)).all()
  border = np.array([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225])
  has_pad = (np.abs(images - border) < 1e-4).all(-1).reshape(8, -1).any(1)
  assert has_pad.sum() >= 4


@pytest.mark.parametrize("kind, epoch", [("pk", "identities"),
                                         ("pk", "images"),
                                         ("random", "images")])
def test_train_process_shards_concatenate(split, kind, epoch):
  single = list(itertools.islice(_train(split, kind, epoch), 2))
  shards = [list(itertools.islice(
      _train(split, kind, epoch, process_index=i, process_count=2), 2))
            for i in range(2)]
  for step in range(2):
    for key in single[step]:
      assert shards[0][step][key].shape[0] == 4
      # Augmentation seeds use the global position: identical pixels too.
      np.testing.assert_array_equal(
          np.concatenate([shards[0][step][key], shards[1][step][key]]),
          single[step][key])


def test_num_eval_batches():
  assert pipeline.num_eval_batches(24, 8) == 3
  assert pipeline.num_eval_batches(25, 8) == 4
  assert pipeline.num_eval_batches(1, 8) == 1
  assert pipeline.num_eval_batches(0, 8) == 0


def test_eval_order_padding_mask_and_index(split):
  n = len(split)  # 24 images.
  batches = list(pipeline.eval_batches(split, batch_size=10, height=H,
                                       width=W))
  assert len(batches) == pipeline.num_eval_batches(n, 10) == 3
  for b in batches:
    assert b["images"].shape == (10, H, W, 3)
    assert b["images"].dtype == np.float32
    assert b["mask"].dtype == np.bool_
    assert b["index"].dtype == b["pids"].dtype == np.int32
  index = np.concatenate([b["index"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(index, np.r_[np.arange(n), -1, -1, -1, -1,
                                             -1, -1])
  np.testing.assert_array_equal(mask, index >= 0)
  pids = np.concatenate([b["pids"] for b in batches])
  camids = np.concatenate([b["camids"] for b in batches])
  np.testing.assert_array_equal(pids[:n], split.pids)
  np.testing.assert_array_equal(camids[:n], split.camids)
  assert (pids[n:] == -1).all() and (camids[n:] == -1).all()
  images = np.concatenate([b["images"] for b in batches])
  np.testing.assert_array_equal(_image_ids(images[:n]), np.arange(n))
  assert (images[n:] == 0).all()


def test_eval_process_shards(split):
  single = list(pipeline.eval_batches(split, batch_size=10, height=H,
                                      width=W))
  shards = [list(pipeline.eval_batches(split, batch_size=10, height=H,
                                       width=W, process_index=i,
                                       process_count=2)) for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == len(single)
  for step, batch in enumerate(single):
    for key in batch:
      np.testing.assert_array_equal(
          np.concatenate([shards[0][step][key], shards[1][step][key]]),
          batch[key])
  with pytest.raises(ValueError, match="process count"):
    pipeline.eval_batches(split, batch_size=10, height=H, width=W,
                          process_count=3)


def _truncate(path):
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])


def test_train_skip_corrupt_replaces_by_same_identity_and_counts(split,
                                                                  caplog):
  # pid 4 owns images 10..14; image 12 goes bad, image 13 stands in for it.
  bad = 12
  assert list(np.flatnonzero(split.pids == 4)) == [10, 11, 12, 13, 14]
  steps = 6
  no_aug = AugmentConfig(H, W, flip=False, pad=0, random_erasing=0.0)
  clean = [_image_ids(b["images"])
           for b in itertools.islice(_train(split, augment=no_aug), steps)]
  occurrences = sum(int((ids == bad).sum()) for ids in clean)
  assert occurrences > 0
  _truncate(split.paths[bad])
  batches = _train(split, augment=no_aug, skip_corrupt=True)
  for ids, batch in zip(clean, itertools.islice(batches, steps)):
    assert batch["images"].shape == (8, H, W, 3)
    np.testing.assert_array_equal(_image_ids(batch["images"]),
                                  np.where(ids == bad, 13, ids))
    # Same identity, so the P x K labels are untouched.
    assert (batch["pids"].reshape(4, 2) == batch["pids"][::2, None]).all()
  assert batches.stats == {"corrupt_files": 1, "replaced": occurrences}
  assert batches.corrupt_files == [split.paths[bad]]
  # The skip is logged once, naming the file and its stand-in.
  warnings = [r.getMessage() for r in caplog.records
              if r.levelname == "WARNING"]
  warnings = [m for m in warnings if split.paths[bad] in m]
  assert len(warnings) == 1 and split.paths[13] in warnings[0]


def test_train_skip_corrupt_resume_replays(split):
  _truncate(split.paths[6])  # pid 3 (images 6..9).
  run = list(itertools.islice(_train(split, skip_corrupt=True), 4))
  resumed = next(_train(split, skip_corrupt=True, start_step=3))
  for key in resumed:
    np.testing.assert_array_equal(resumed[key], run[3][key])


def test_train_skip_corrupt_identity_without_readable_image_raises(split):
  bad = split.paths[0]  # The only image of pid 0, in every epoch.
  _truncate(bad)
  with pytest.raises(ValueError, match=f"No readable replacement.*{bad}"):
    for _ in itertools.islice(_train(split, skip_corrupt=True), NUM_IDS // 4):
      pass


class _BytesReader:
  """A reader over in-memory encoded images (what a TFDS reader provides)."""

  def __init__(self, blobs):
    self._blobs = tf.constant(blobs, tf.string)

  def read(self, index):
    return tf.gather(self._blobs, index)

  def name(self, index):
    return f"record {index}"


def test_custom_reader_feeds_train_and_eval(split):
  blobs = []
  for path in split.paths:
    with open(path, "rb") as f:
      blobs.append(f.read())
  reader = _BytesReader(blobs)
  from_files = next(pipeline.eval_batches(split, batch_size=8, height=H,
                                          width=W))
  from_reader = next(pipeline.eval_batches(split, batch_size=8, height=H,
                                           width=W, reader=reader))
  for key in from_files:
    np.testing.assert_array_equal(from_reader[key], from_files[key])
  train = next(_train(split, reader=reader))
  np.testing.assert_array_equal(train["images"], next(_train(split))["images"])
  # Errors name the item the reader's way.
  blobs[3] = blobs[3][:len(blobs[3]) // 2]
  with pytest.raises(ValueError, match="Cannot decode image file record 3"):
    list(pipeline.eval_batches(split, batch_size=8, height=H, width=W,
                               reader=_BytesReader(blobs)))
