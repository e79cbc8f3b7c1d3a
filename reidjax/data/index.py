"""The in-memory index of a ReID dataset: what a layout parser produces.

An index is plain Python/NumPy (no TensorFlow), shared by the direct-from-folder
pipeline and, later, the TFDS builders.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ImageSplit:
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

  @property
  def num_pids(self) -> int:
    return int(np.unique(self.pids).size)

  @property
  def num_cams(self) -> int:
    return int(np.unique(self.camids).size)


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
