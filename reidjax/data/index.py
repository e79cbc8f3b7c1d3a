"""The in-memory index of a ReID dataset: what a layout parser produces.

An index is plain Python/NumPy (no TensorFlow), shared by the direct-from-folder
pipeline and the TFDS builders. Image datasets index images (path, pid,
camid); video datasets index tracklets (the ordered frame paths of one
person in one camera, pid, camid). Both kinds of split share the same
``pids`` / ``camids`` / ``num_pids`` / ``len`` interface, so samplers and
evaluators treat an item as an image or a tracklet alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np


class _Labelled:
  """Counts shared by image and video splits (``pids``, ``camids`` arrays)."""

  pids: np.ndarray
  camids: np.ndarray

  @property
  def num_pids(self) -> int:
    return int(np.unique(self.pids).size)

  @property
  def num_cams(self) -> int:
    return int(np.unique(self.camids).size)


@dataclasses.dataclass(frozen=True)
class ImageSplit(_Labelled):
  """One split of an image dataset.

  Attributes:
    paths: (N,) image file paths.
    pids: (N,) int32 identity labels. Train splits are relabelled 0..P-1;
      query/gallery keep the dataset's own ids (0 = distractor).
    camids: (N,) int32 camera ids, 0-based.
  """

  paths: tuple[str, ...]
  pids: np.ndarray
  camids: np.ndarray

  def __post_init__(self):
    n = len(self.paths)
    if self.pids.shape != (n,) or self.camids.shape != (n,):
      raise ValueError(
          f"ImageSplit: {n} paths but pids {self.pids.shape} and camids "
          f"{self.camids.shape}; all three must have the same length.")

  def __len__(self) -> int:
    return len(self.paths)


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  """Train / query / gallery splits of an image ReID dataset."""

  name: str
  root: str
  train: ImageSplit
  query: ImageSplit
  gallery: ImageSplit

  @property
  def num_train_pids(self) -> int:
    return self.train.num_pids

  def summary(self) -> str:
    rows = [f"{self.name} ({self.root})",
            f"  {'split':8s} {'ids':>6s} {'images':>8s} {'cams':>5s}"]
    for name in ("train", "query", "gallery"):
      s = getattr(self, name)
      rows.append(f"  {name:8s} {s.num_pids:6d} {len(s):8d} {s.num_cams:5d}")
    return "\n".join(rows)


@dataclasses.dataclass(frozen=True)
class VideoSplit(_Labelled):
  """One split of a video dataset: a list of tracklets.

  Attributes:
    tracklets: (T,) tracklets, each a non-empty tuple of frame paths in
      temporal order.
    pids: (T,) int32 identity labels (train relabelled 0..P-1; query/gallery
      keep the dataset's ids, 0 = distractor).
    camids: (T,) int32 camera ids, 0-based.
  """

  tracklets: tuple[tuple[str, ...], ...]
  pids: np.ndarray
  camids: np.ndarray

  def __post_init__(self):
    n = len(self.tracklets)
    if self.pids.shape != (n,) or self.camids.shape != (n,):
      raise ValueError(
          f"VideoSplit: {n} tracklets but pids {self.pids.shape} and camids "
          f"{self.camids.shape}; all three must have the same length.")
    empty = [i for i, t in enumerate(self.tracklets) if not t]
    if empty:
      raise ValueError(f"VideoSplit: tracklet {empty[0]} has no frames.")

  def __len__(self) -> int:
    return len(self.tracklets)

  @property
  def num_frames(self) -> np.ndarray:
    """(T,) int64 number of frames of each tracklet."""
    return np.fromiter((len(t) for t in self.tracklets), np.int64,
                       count=len(self.tracklets))

  def frame_table(self) -> tuple[tuple[str, ...], np.ndarray]:
    """All frame paths flattened, and (T,) int64 offsets of each tracklet.

    Frame ``f`` of tracklet ``t`` is ``paths[offsets[t] + f]``.
    """
    counts = self.num_frames
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    paths = tuple(p for t in self.tracklets for p in t)
    return paths, offsets


@dataclasses.dataclass(frozen=True)
class VideoDataset:
  """Train / query / gallery splits of a video ReID dataset."""

  name: str
  root: str
  train: VideoSplit
  query: VideoSplit
  gallery: VideoSplit

  @property
  def num_train_pids(self) -> int:
    return self.train.num_pids

  def summary(self) -> str:
    rows = [f"{self.name} ({self.root})",
            f"  {'split':8s} {'ids':>6s} {'tracklets':>9s} {'frames':>8s} "
            f"{'min/avg/max len':>16s} {'cams':>5s}"]
    for name in ("train", "query", "gallery"):
      s = getattr(self, name)
      n = s.num_frames
      lengths = (f"{n.min()}/{n.mean():.0f}/{n.max()}" if len(s) else "-")
      rows.append(f"  {name:8s} {s.num_pids:6d} {len(s):9d} {int(n.sum()):8d} "
                  f"{lengths:>16s} {s.num_cams:5d}")
    return "\n".join(rows)


Split = ImageSplit | VideoSplit
Dataset = ImageDataset | VideoDataset


def is_video(dataset_or_split) -> bool:
  """True for a ``VideoDataset`` or ``VideoSplit``."""
  return isinstance(dataset_or_split, (VideoDataset, VideoSplit))
