"""Which frames of a tracklet make a clip: training draws and test-time plans.

Pure NumPy (no TensorFlow): the video pipelines turn these frame indices into
file reads. A tracklet of ``num_frames`` frames is indexed 0..num_frames-1 in
temporal order; a clip is ``clip_length`` (n) of those indices.

Training (``sample_clip``, one random clip per tracklet and step):

  "random"       n distinct frames drawn uniformly, sorted in temporal order;
                 drawn with replacement only when the tracklet has fewer than
                 n frames (torchreid's "random" video sampler).
  "consecutive"  n consecutive frames from a uniform start (DuATM: 16
                 frames). A tracklet shorter than n is read circularly: the
                 start is uniform over all its frames and the clip wraps
                 around to frame 0 ("circular padding").
  "stride"       n frames ``stride`` apart from a uniform start (DCANet: 4
                 frames, stride 8). Reading: when the span (n-1)*stride+1
                 does not fit, the stride shrinks to the largest one that
                 fits, so the clip still spreads over the whole tracklet;
                 when even stride 1 does not fit (fewer than n frames) the
                 clip is "consecutive" (circular).
  "evenly"       TSN-style: the tracklet is cut into n equal segments
                 (bounds floor(i*N/n)) and one frame is drawn uniformly in
                 each; when N < n a segment may be empty and then holds its
                 start frame floor(i*N/n), so frames repeat in order.

Test time (``test_clips``, every clip of one tracklet, deterministic):

  "all"      clips of n consecutive frames starting every ``stride`` frames
             (default stride n: disjoint clips; FGRA: n 6, stride 3, i.e.
             adjacent clips overlap by half). When the last clip ends before
             the last frame, one more clip ending at the last frame covers
             the tail (it overlaps its predecessor), so every frame is in
             some clip. A tracklet shorter than n gives one circular clip.
  "first"    the first n frames, circular when shorter (DuATM tests on 64
             consecutive frames).
  "evenly"   the middle frame of each of n equal segments,
             floor((2i+1)*N / 2n).

``plan_test_clips`` lays the clips of a whole split end to end (tracklet 0's
clips first), which is what ``pipeline.eval_clip_batches`` iterates over;
clip features are then averaged per tracklet (``ClipPlan.tracklet``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from reidjax.data.index import VideoSplit

TRAIN_STRATEGIES = ("random", "consecutive", "stride", "evenly")
TEST_STRATEGIES = ("all", "first", "evenly")


def _check_lengths(num_frames: int, clip_length: int) -> None:
  if num_frames < 1:
    raise ValueError(f"A tracklet needs at least one frame, got num_frames="
                     f"{num_frames}.")
  if clip_length < 1:
    raise ValueError(f"clip_length must be >= 1 frame, got {clip_length}.")


def _check_strategy(strategy: str, valid: tuple[str, ...], what: str) -> None:
  if strategy not in valid:
    other, other_what = ((TEST_STRATEGIES, "test") if what == "training"
                         else (TRAIN_STRATEGIES, "training"))
    hint = (f" ({strategy!r} is a {other_what}-time strategy.)"
            if strategy in other else "")
    raise ValueError(f"Unknown {what} clip strategy {strategy!r}; choose one "
                     f"of {', '.join(map(repr, valid))}.{hint}")


def _check_stride(stride: int) -> None:
  if stride < 1:
    raise ValueError(f"clip stride must be >= 1 frame, got {stride}.")


def _circular(start: int, num_frames: int, clip_length: int) -> np.ndarray:
  return (start + np.arange(clip_length, dtype=np.int64)) % num_frames


def sample_clip(num_frames: int,
                clip_length: int,
                strategy: str,
                rng: np.random.Generator,
                *,
                stride: int = 8) -> np.ndarray:
  """Draws the frame indices of one training clip.

  Args:
    num_frames: N, frames in the tracklet (>= 1).
    clip_length: n, frames in the clip (>= 1).
    strategy: one of ``TRAIN_STRATEGIES`` (see the module docstring).
    rng: the generator all randomness comes from.
    stride: frame step of the "stride" strategy (ignored by the others).

  Returns:
    (clip_length,) int64 frame indices in [0, N).
  """
  _check_strategy(strategy, TRAIN_STRATEGIES, "training")
  _check_lengths(num_frames, clip_length)
  _check_stride(stride)
  n, big_n = clip_length, num_frames
  if strategy == "random":
    frames = rng.choice(big_n, size=n, replace=big_n < n)
    return np.sort(frames).astype(np.int64)
  if strategy == "stride" and big_n >= n:
    # Largest stride <= the requested one whose span fits in the tracklet.
    step = min(stride, (big_n - 1) // (n - 1)) if n > 1 else 1
    start = rng.integers(0, big_n - (n - 1) * step)
    return start + step * np.arange(n, dtype=np.int64)
  if strategy in ("consecutive", "stride"):
    if big_n >= n:
      return rng.integers(0, big_n - n + 1) + np.arange(n, dtype=np.int64)
    return _circular(int(rng.integers(0, big_n)), big_n, n)
  # "evenly": one uniform frame per segment [lo_i, hi_i).
  bounds = np.arange(n + 1, dtype=np.int64) * big_n // n
  lo, hi = bounds[:-1], np.maximum(bounds[1:], bounds[:-1] + 1)
  return rng.integers(lo, hi).astype(np.int64)


def test_clips(num_frames: int,
               clip_length: int,
               strategy: str,
               *,
               stride: int | None = None) -> np.ndarray:
  """The test-time clips of one tracklet.

  Args:
    num_frames: N, frames in the tracklet (>= 1).
    clip_length: n, frames per clip (>= 1).
    strategy: one of ``TEST_STRATEGIES`` (see the module docstring).
    stride: start-to-start distance of the "all" strategy's clips (default
      n); ignored by the others.

  Returns:
    (C, clip_length) int64 frame indices in [0, N), clips in temporal order;
    C = 1 except for "all".
  """
  _check_strategy(strategy, TEST_STRATEGIES, "test")
  _check_lengths(num_frames, clip_length)
  if stride is not None:
    _check_stride(stride)
  n, big_n = clip_length, num_frames
  if strategy == "evenly":
    centres = (2 * np.arange(n, dtype=np.int64) + 1) * big_n // (2 * n)
    return centres[None]
  if strategy == "first" or big_n <= n:
    return _circular(0, big_n, n)[None]
  stride = n if stride is None else stride
  starts = np.arange(0, big_n - n + 1, stride, dtype=np.int64)
  if starts[-1] + n < big_n:
    starts = np.append(starts, big_n - n)  # The tail clip.
  return starts[:, None] + np.arange(n, dtype=np.int64)


# Not a test, whatever its name: keep pytest from collecting it where imported.
test_clips.__test__ = False


@dataclasses.dataclass(frozen=True)
class ClipPlan:
  """The test-time clips of a whole split, tracklet by tracklet.

  Attributes:
    tracklet: (C,) int64 tracklet index (into the split) of each clip,
      non-decreasing.
    frames: (C, n) int64 frame indices of each clip within its tracklet.
  """

  tracklet: np.ndarray
  frames: np.ndarray

  def __post_init__(self):
    if (self.tracklet.ndim != 1 or self.frames.ndim != 2 or
        self.frames.shape[0] != self.tracklet.shape[0]):
      raise ValueError(
          f"ClipPlan: tracklet must be (C,) and frames (C, n), got "
          f"{self.tracklet.shape} and {self.frames.shape}.")

  @property
  def num_clips(self) -> int:
    return int(self.tracklet.shape[0])

  @property
  def clip_length(self) -> int:
    return int(self.frames.shape[1])


def plan_test_clips(split: VideoSplit,
                    clip_length: int,
                    strategy: str,
                    *,
                    stride: int | None = None) -> ClipPlan:
  """``test_clips`` of every tracklet of ``split``, tracklet 0's first.

  Args:
    split: the query or gallery split.
    clip_length: n, frames per clip.
    strategy: one of ``TEST_STRATEGIES``.
    stride: the "all" strategy's clip stride (default n).

  Returns:
    The ClipPlan; ``plan.tracklet`` groups clips back into tracklets.
  """
  _check_strategy(strategy, TEST_STRATEGIES, "test")
  per_tracklet = [test_clips(int(count), clip_length, strategy, stride=stride)
                  for count in split.num_frames]
  if not per_tracklet:
    return ClipPlan(np.zeros(0, np.int64), np.zeros((0, clip_length), np.int64))
  counts = [c.shape[0] for c in per_tracklet]
  tracklet = np.repeat(np.arange(len(split), dtype=np.int64), counts)
  return ClipPlan(tracklet, np.concatenate(per_tracklet).astype(np.int64))
