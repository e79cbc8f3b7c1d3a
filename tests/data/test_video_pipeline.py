"""Tests for the video clip pipelines (tiny JPEG tracklets in tmp_path)."""

import itertools
import os

import numpy as np
from PIL import Image
import pytest

from reidjax.data import clips, pipeline
from reidjax.data.index import VideoSplit
from reidjax.data.sampler import build_sampler
from reidjax.data.transforms import AugmentConfig
from tests.data.test_pipeline import _truncate

H, W = 32, 16
P, K, N = 3, 2, 4  # Identities, tracklets per identity, frames per clip.
LENGTHS = [5, 9, 3, 12, 6, 7, 4, 10, 8, 5, 11, 6, 2]
TRACKLET_PIDS = [0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5]
NO_AUG = AugmentConfig(H, W, flip=False, pad=0, random_erasing=0.0)
FLIP_ONLY = AugmentConfig(H, W, flip=True, pad=0, random_erasing=0.0)
_MEAN = np.array([0.485, 0.456, 0.406])
_STD = np.array([0.229, 0.224, 0.225])


def _colour(i):
  """A distinct RGB colour for flat frame i (>= 17 levels from the others)."""
  return np.array([(37 * i) % 200 + 20, (91 * i) % 200 + 20,
                   (53 * i) % 200 + 20], np.uint8)


@pytest.fixture(name="split")
def _split(tmp_path):
  return make_split(tmp_path)


def make_split(tmp_path):
  """13 tracklets of 6 ids; flat frame f: left half _colour(f), right black."""
  tracklets, f = [], 0
  for t, length in enumerate(LENGTHS):
    folder = os.path.join(tmp_path, f"{TRACKLET_PIDS[t]:04d}", f"T{t:02d}")
    os.makedirs(folder)
    frames = []
    for i in range(length):
      image = np.zeros((H, W, 3), np.uint8)
      image[:, :W // 2] = _colour(f)
      path = os.path.join(folder, f"F{i:03d}.jpg")
      # 4:4:4 so that the colour does not bleed into the black half.
      Image.fromarray(image).save(path, quality=95, subsampling=0)
      frames.append(path)
      f += 1
    tracklets.append(tuple(frames))
  return VideoSplit(tuple(tracklets), np.array(TRACKLET_PIDS, np.int32),
                    (np.arange(len(LENGTHS)) % 3).astype(np.int32))


def _frames_and_flips(images):
  """(..., H, W, 3) normalised -> (flat frame ids, flipped) per image."""
  rgb = (images * _STD + _MEAN) * 255
  left = rgb[..., :, :W // 4, :].mean(axis=(-3, -2))
  right = rgb[..., :, -(W // 4):, :].mean(axis=(-3, -2))
  flipped = right.max(-1) > left.max(-1)
  shown = np.where(flipped[..., None], right, left)
  table = np.stack([_colour(i) for i in range(sum(LENGTHS))]).astype(float)
  dist = np.abs(shown[..., None, :] - table).max(-1)
  assert (dist.min(-1) < 3).all()
  return dist.argmin(-1), flipped


def _sampler(split, kind="pk", epoch="identities", seed=5, **process):
  """P x K tracklets (or P*K random tracklets) over ``split``."""
  return build_sampler(split.pids, kind=kind, epoch=epoch, num_identities=P,
                      num_instances=K, seed=seed, **process)


def _train(split, kind="pk", epoch="identities", process_index=0,
           process_count=1, **kwargs):
  args = dict(clip_length=N, strategy="random", augment=NO_AUG, seed=5)
  args.update(kwargs)
  args["sampler"] = _sampler(split, kind, epoch, args["seed"],
                             process_index=process_index,
                             process_count=process_count)
  return pipeline.train_clip_batches(split, **args)


def _offsets(split):
  return split.frame_table()[1]


def test_train_shapes_and_dtypes(split):
  batch = next(_train(split, augment=AugmentConfig(64, 32)))
  assert set(batch) == {"images", "pids", "camids"}
  assert batch["images"].shape == (P * K, N, 64, 32, 3)
  assert batch["images"].dtype == np.float32
  assert batch["pids"].shape == batch["camids"].shape == (P * K,)
  assert batch["pids"].dtype == batch["camids"].dtype == np.int32
  assert np.isfinite(batch["images"]).all()


@pytest.mark.parametrize("strategy, epoch", [("random", "identities"),
                                             ("consecutive", "identities"),
                                             ("random", "images")])
def test_train_clips_are_p_by_k_tracklets_and_their_frames(split, strategy,
                                                           epoch):
  sampler = _sampler(split, epoch=epoch)
  # One item = one tracklet: 6 ids // P, or chunks of K = 2 tracklets per
  # id (1 each: 2, 2, 3, 2, 2, 2 tracklets) // P.
  assert sampler.steps_per_epoch == 2
  offsets, lengths = _offsets(split), np.array(LENGTHS)
  batches = itertools.islice(_train(split, epoch=epoch, strategy=strategy), 4)
  for step, batch in enumerate(batches):
    tracklets = sampler.global_batch(step)
    np.testing.assert_array_equal(batch["pids"], split.pids[tracklets])
    np.testing.assert_array_equal(batch["camids"], split.camids[tracklets])
    groups = batch["pids"].reshape(P, K)
    assert (groups == groups[:, :1]).all() and np.unique(groups).size == P
    if epoch == "images":  # A chunk never repeats a tracklet.
      assert all(np.unique(row).size == K
                 for row in tracklets.reshape(P, K))
    frames, flipped = _frames_and_flips(batch["images"])
    assert not flipped.any()
    local = frames - offsets[tracklets][:, None]
    # Every frame comes from the clip's own tracklet.
    assert (local >= 0).all() and (local < lengths[tracklets][:, None]).all()
    for clip, length in zip(local, lengths[tracklets]):
      if strategy == "random" and length >= N:
        assert (np.diff(clip) > 0).all()
      if strategy == "consecutive":
        np.testing.assert_array_equal(clip, (clip[0] + np.arange(N)) % length)


def test_train_all_frames_of_a_clip_share_the_flip(split):
  flips = []
  for batch in itertools.islice(_train(split, augment=FLIP_ONLY), 3):
    frames, flipped = _frames_and_flips(batch["images"])
    # Each clip is flipped as a whole or not at all.
    assert (flipped == flipped[:, :1]).all()
    flips.extend(flipped[:, 0])
  # 18 clips, each flipped with probability 1/2: both kinds occur.
  assert 0 < sum(flips) < len(flips)


def test_train_all_frames_of_a_clip_share_crop_and_erasing(split):
  augment = AugmentConfig(H, W, flip=True, pad=3, random_erasing=1.0)
  images = next(_train(split, augment=augment))["images"]
  border = -_MEAN / _STD
  pad_mask = (np.abs(images - border) < 1e-4).all(-1)  # (b, n, H, W)
  erased = (images == 0).all(-1)
  assert erased.reshape(P * K, -1).any(1).all()  # Every clip is erased.
  for clip_pad, clip_erased in zip(pad_mask, erased):
    for j in range(1, N):
      np.testing.assert_array_equal(clip_pad[j], clip_pad[0])
      np.testing.assert_array_equal(clip_erased[j], clip_erased[0])
  # But different clips are augmented differently.
  assert len({m[0].tobytes() for m in erased}) > 1


def test_train_deterministic_and_resumable(split):
  augment = AugmentConfig(H, W, pad=2)
  first = list(itertools.islice(_train(split, augment=augment), 4))
  resumed = list(itertools.islice(
      _train(split, augment=augment, start_step=3), 1))
  np.testing.assert_array_equal(first[3]["images"], resumed[0]["images"])
  np.testing.assert_array_equal(first[3]["pids"], resumed[0]["pids"])
  again = next(_train(split, augment=augment))
  np.testing.assert_array_equal(first[0]["images"], again["images"])
  other = next(_train(split, augment=augment, seed=6))
  assert not np.array_equal(first[0]["images"], other["images"])


@pytest.mark.parametrize("kind, epoch", [("pk", "identities"),
                                         ("pk", "images"),
                                         ("random", "images")])
def test_train_process_shards_concatenate(split, kind, epoch):
  augment = AugmentConfig(H, W, pad=2)
  single = next(_train(split, kind, epoch, augment=augment, start_step=3))
  shards = [next(_train(split, kind, epoch, augment=augment, start_step=3,
                        process_index=i, process_count=2)) for i in range(2)]
  np.testing.assert_array_equal(
      single["pids"], split.pids[_sampler(split, kind, epoch).global_batch(3)])
  for key in single:
    assert shards[0][key].shape[0] == P * K // 2
    np.testing.assert_array_equal(
        np.concatenate([shards[0][key], shards[1][key]]), single[key])


def test_train_bad_strategy_fails_early(split):
  with pytest.raises(ValueError, match="'middle'.*'random'"):
    _train(split, strategy="middle")


def test_eval_clips_in_plan_order_with_padding(split):
  plan = clips.plan_test_clips(split, N, "all", stride=2)
  c = plan.num_clips
  batches = list(pipeline.eval_clip_batches(split, plan, batch_size=8,
                                            height=H, width=W))
  assert len(batches) == pipeline.num_eval_batches(c, 8)
  for b in batches:
    assert b["images"].shape == (8, N, H, W, 3)
    assert b["mask"].dtype == np.bool_ and b["index"].dtype == np.int32
  cat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  pad = len(batches) * 8 - c
  assert pad > 0
  np.testing.assert_array_equal(cat["index"], np.r_[np.arange(c),
                                                    np.full(pad, -1)])
  np.testing.assert_array_equal(cat["mask"], cat["index"] >= 0)
  np.testing.assert_array_equal(cat["pids"][:c], split.pids[plan.tracklet])
  np.testing.assert_array_equal(cat["camids"][:c],
                                split.camids[plan.tracklet])
  assert (cat["pids"][c:] == -1).all() and (cat["camids"][c:] == -1).all()
  frames, flipped = _frames_and_flips(cat["images"][:c])
  assert not flipped.any()
  np.testing.assert_array_equal(
      frames, _offsets(split)[plan.tracklet][:, None] + plan.frames)
  assert (cat["images"][c:] == 0).all()


def test_eval_clip_process_shards(split):
  plan = clips.plan_test_clips(split, N, "first")
  single = list(pipeline.eval_clip_batches(split, plan, batch_size=4,
                                           height=H, width=W))
  shards = [list(pipeline.eval_clip_batches(
      split, plan, batch_size=4, height=H, width=W, process_index=i,
      process_count=2)) for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == len(single)
  for step, batch in enumerate(single):
    for key in batch:
      np.testing.assert_array_equal(
          np.concatenate([shards[0][step][key], shards[1][step][key]]),
          batch[key])


def test_eval_rejects_a_plan_of_another_split(split):
  other = VideoSplit(split.tracklets[:2], split.pids[:2], split.camids[:2])
  plan = clips.plan_test_clips(split, N, "all")
  with pytest.raises(ValueError, match="does not fit"):
    pipeline.eval_clip_batches(other, plan, batch_size=4, height=H, width=W)


def test_train_skip_corrupt_replaces_by_next_frame_and_counts(split):
  steps = 6
  clean = [_frames_and_flips(b["images"])[0]
           for b in itertools.islice(_train(split), steps)]
  offsets = _offsets(split)
  bad_frame = offsets[2] + 1  # Tracklet 2 (3 frames), frame 1.
  occurrences = sum(int((f == bad_frame).sum()) for f in clean)
  assert occurrences > 0
  _truncate(split.tracklets[2][1])
  batches = _train(split, skip_corrupt=True)
  skipped = list(itertools.islice(batches, steps))
  for frames, batch in zip(clean, skipped):
    assert batch["images"].shape == (P * K, N, H, W, 3)
    # The bad frame shows its tracklet's next frame; all else is unchanged.
    expected = np.where(frames == bad_frame, bad_frame + 1, frames)
    np.testing.assert_array_equal(_frames_and_flips(batch["images"])[0],
                                  expected)
  assert batches.stats == {"corrupt_files": 1, "replaced": occurrences}
  assert batches.corrupt_files == [split.tracklets[2][1]]
  # A resumed run replays the same batches.
  resumed = next(_train(split, skip_corrupt=True, start_step=steps - 1))
  np.testing.assert_array_equal(resumed["images"], skipped[-1]["images"])


def test_train_skip_corrupt_whole_tracklet_uses_the_identity(split):
  # Tracklet 12 (2 frames) is id 5's second tracklet; id 5 also has tracklet
  # 11, whose first frame stands in for both.
  offsets = _offsets(split)
  for path in split.tracklets[12]:
    _truncate(path)
  batches = _train(split, skip_corrupt=True)
  shown = np.concatenate([_frames_and_flips(b["images"])[0].ravel()
                          for b in itertools.islice(batches, 6)])
  assert batches.stats["corrupt_files"] == 2
  assert not np.isin(shown, offsets[12] + np.arange(2)).any()
  assert (shown == offsets[11]).sum() >= batches.stats["replaced"] > 0


def test_train_checks_the_sampler_against_split_and_process(split):
  tracklets_of_others = build_sampler(split.pids[:-2], kind="pk",
                                      epoch="images", num_identities=P,
                                      num_instances=K, seed=5)
  with pytest.raises(ValueError, match=r"built for 11 items.*has 13"):
    pipeline.train_clip_batches(split, sampler=tracklets_of_others,
                                clip_length=N, strategy="random",
                                augment=NO_AUG, seed=5)
  with pytest.raises(ValueError, match=r"\(None, 2\) differ.*\(0, 1\)"):
    pipeline.train_clip_batches(split, sampler=_sampler(split), clip_length=N,
                                strategy="random", augment=NO_AUG, seed=5,
                                process_count=2)
