"""Tests for clip frame selection (reidjax.data.clips)."""

import numpy as np
import pytest

from reidjax.data import clips
from reidjax.data.index import VideoSplit


def _draws(num_frames, clip_length, strategy, count=200, seed=0, **kwargs):
  rng = np.random.default_rng(seed)
  return np.stack([
      clips.sample_clip(num_frames, clip_length, strategy, rng, **kwargs)
      for _ in range(count)])


@pytest.mark.parametrize("strategy", clips.TRAIN_STRATEGIES)
@pytest.mark.parametrize("num_frames", [1, 3, 8, 50])
def test_train_clip_shape_dtype_and_range(strategy, num_frames):
  draws = _draws(num_frames, 8, strategy, count=50)
  assert draws.shape == (50, 8) and draws.dtype == np.int64
  assert draws.min() >= 0 and draws.max() < num_frames


@pytest.mark.parametrize("strategy", clips.TRAIN_STRATEGIES)
def test_train_clip_is_a_function_of_the_rng(strategy):
  a = _draws(40, 6, strategy, count=20, seed=3)
  b = _draws(40, 6, strategy, count=20, seed=3)
  c = _draws(40, 6, strategy, count=20, seed=4)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_random_is_sorted_distinct_and_covers_the_tracklet():
  draws = _draws(30, 8, "random", count=300)
  assert (np.diff(draws, axis=1) > 0).all()  # Sorted, no repeats.
  # Uniform: every frame is drawn, each about 300 * 8 / 30 = 80 times.
  counts = np.bincount(draws.ravel(), minlength=30)
  assert counts.min() > 40 and counts.max() < 130


def test_random_short_tracklet_repeats_frames_in_order():
  draws = _draws(3, 8, "random", count=100)
  assert (np.diff(draws, axis=1) >= 0).all()
  # 8 frames out of 3: repeats are forced.
  assert all(np.unique(d).size <= 3 for d in draws)
  assert set(draws.ravel()) == {0, 1, 2}


def test_consecutive_long_tracklet():
  draws = _draws(20, 6, "consecutive", count=300)
  np.testing.assert_array_equal(np.diff(draws, axis=1), 1)
  # Start uniform over [0, 20 - 6] (15 values).
  assert set(draws[:, 0]) == set(range(15))


def test_consecutive_short_tracklet_wraps_circularly():
  draws = _draws(5, 12, "consecutive", count=100)
  for d in draws:
    # Consecutive modulo 5, i.e. wraps from frame 4 back to frame 0.
    np.testing.assert_array_equal(d, (d[0] + np.arange(12)) % 5)
  assert set(draws[:, 0]) == set(range(5))


def test_stride_fits():
  # DCANet: 4 frames, stride 8; span 25 fits in 40 frames.
  draws = _draws(40, 4, "stride", count=300, stride=8)
  np.testing.assert_array_equal(np.diff(draws, axis=1), 8)
  assert set(draws[:, 0]) == set(range(40 - 24))


def test_stride_shrinks_to_fit():
  # 4 frames at stride 8 need 25 frames; in 16 the largest stride that fits
  # is (16 - 1) // 3 = 5.
  draws = _draws(16, 4, "stride", count=200, stride=8)
  np.testing.assert_array_equal(np.diff(draws, axis=1), 5)
  assert set(draws[:, 0]) == {0}  # 0 + 15 = 15: the only start that fits.
  draws = _draws(10, 4, "stride", count=200, stride=8)
  np.testing.assert_array_equal(np.diff(draws, axis=1), 3)
  assert set(draws[:, 0]) == {0}


def test_stride_shorter_than_clip_is_circular():
  draws = _draws(3, 4, "stride", count=50, stride=8)
  for d in draws:
    np.testing.assert_array_equal(d, (d[0] + np.arange(4)) % 3)


def test_evenly_one_frame_per_segment():
  n, big_n = 4, 22
  draws = _draws(big_n, n, "evenly", count=400)
  bounds = [0, 5, 11, 16, 22]  # floor(i * 22 / 4)
  for i in range(n):
    # Uniform over segment i, every frame of it drawn.
    assert set(draws[:, i]) == set(range(bounds[i], bounds[i + 1]))
  assert (np.diff(draws, axis=1) > 0).all()


def test_evenly_short_tracklet_repeats_in_order():
  draws = _draws(3, 6, "evenly", count=20)
  # Segments [floor(i*3/6), floor((i+1)*3/6)) = [0,0),[0,1),[1,1),[1,2),...
  np.testing.assert_array_equal(draws, np.tile([0, 0, 1, 1, 2, 2], (20, 1)))


def test_test_clips_all_disjoint_by_default():
  out = clips.test_clips(12, 4, "all")
  np.testing.assert_array_equal(out, np.arange(12).reshape(3, 4))
  assert out.dtype == np.int64


def test_test_clips_all_fgra_overlap_by_half():
  out = clips.test_clips(15, 6, "all", stride=3)
  # Starts 0, 3, 6, 9 (9 + 6 = 15 is the end: no tail clip needed).
  np.testing.assert_array_equal(out[:, 0], [0, 3, 6, 9])
  np.testing.assert_array_equal(out, out[:, :1] + np.arange(6))
  for a, b in zip(out[:-1], out[1:]):
    assert np.intersect1d(a, b).size == 3  # Adjacent clips share half.


@pytest.mark.parametrize("num_frames,n,stride", [
    (17, 6, 3), (13, 4, None), (100, 8, 5), (7, 6, 6), (6, 6, None),
    (2, 6, 3)])
def test_test_clips_all_cover_every_frame(num_frames, n, stride):
  out = clips.test_clips(num_frames, n, "all", stride=stride)
  assert out.shape[1] == n and out.min() >= 0 and out.max() < num_frames
  np.testing.assert_array_equal(np.unique(out), np.arange(num_frames))
  if num_frames >= n:
    # Each clip is n consecutive frames, the last ends at the last frame.
    np.testing.assert_array_equal(out, out[:, :1] + np.arange(n))
    assert out[-1, -1] == num_frames - 1
    assert (np.diff(out[:, 0]) > 0).all()


def test_test_clips_all_tail_clip():
  out = clips.test_clips(14, 6, "all", stride=3)
  # Starts 0, 3, 6 reach frame 11; a tail clip [8, 14) covers 12 and 13.
  np.testing.assert_array_equal(out[:, 0], [0, 3, 6, 8])


def test_test_clips_short_tracklet_is_one_circular_clip():
  np.testing.assert_array_equal(clips.test_clips(4, 6, "all", stride=3),
                                [[0, 1, 2, 3, 0, 1]])


def test_test_clips_first():
  np.testing.assert_array_equal(clips.test_clips(100, 64, "first"),
                                np.arange(64)[None])
  np.testing.assert_array_equal(clips.test_clips(3, 7, "first"),
                                [[0, 1, 2, 0, 1, 2, 0]])


def test_test_clips_evenly_is_segment_middles():
  np.testing.assert_array_equal(clips.test_clips(20, 4, "evenly"),
                                [[2, 7, 12, 17]])
  np.testing.assert_array_equal(clips.test_clips(2, 4, "evenly"),
                                [[0, 0, 1, 1]])


def _split(counts):
  tracklets = tuple(tuple(f"t{t}/f{f}.jpg" for f in range(c))
                    for t, c in enumerate(counts))
  n = len(counts)
  return VideoSplit(tracklets, np.arange(n, dtype=np.int32),
                    np.zeros(n, np.int32))


def test_plan_test_clips_concatenates_tracklets_in_order():
  split = _split([15, 4, 8])
  plan = clips.plan_test_clips(split, 6, "all", stride=3)
  per = [clips.test_clips(c, 6, "all", stride=3) for c in (15, 4, 8)]
  assert [p.shape[0] for p in per] == [4, 1, 2]
  assert plan.num_clips == 7 and plan.clip_length == 6
  np.testing.assert_array_equal(plan.tracklet, [0, 0, 0, 0, 1, 2, 2])
  np.testing.assert_array_equal(plan.frames, np.concatenate(per))
  assert plan.tracklet.dtype == plan.frames.dtype == np.int64


def test_plan_test_clips_first_is_one_clip_per_tracklet():
  plan = clips.plan_test_clips(_split([3, 70]), 64, "first")
  np.testing.assert_array_equal(plan.tracklet, [0, 1])
  np.testing.assert_array_equal(plan.frames[0], np.arange(64) % 3)
  np.testing.assert_array_equal(plan.frames[1], np.arange(64))


def test_clip_plan_checks_shapes():
  with pytest.raises(ValueError, match="ClipPlan"):
    clips.ClipPlan(np.zeros(3, np.int64), np.zeros((2, 4), np.int64))


def test_bad_strategy_names_value_and_choices():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="'randm'.*'random', 'consecutive'"):
    clips.sample_clip(10, 4, "randm", rng)
  with pytest.raises(ValueError, match="'all' is a test-time strategy"):
    clips.sample_clip(10, 4, "all", rng)
  with pytest.raises(ValueError, match="'random'.*'all', 'first', 'evenly'"):
    clips.test_clips(10, 4, "random")
  with pytest.raises(ValueError, match="'middle'"):
    clips.plan_test_clips(_split([5]), 4, "middle")
