"""Parsers that turn a dataset folder on disk into an `ImageDataset` index.

Plain Python/NumPy: nothing here imports TensorFlow, so the index can be built
(and checked) on any host. Each parser enforces its dataset's evaluation
protocol (which ids are junk, which are distractors, how train ids are
relabelled), so that every consumer of the index sees the same splits.
"""

from __future__ import annotations

import os
import re
from typing import Callable

import numpy as np

from reidjax.data.index import ImageDataset, ImageSplit

# The top-level folder inside the official Market-1501 zip archive.
MARKET1501_ARCHIVE_DIR = "Market-1501-v15.09.15"
MARKET1501_SPLITS = ("bounding_box_train", "query", "bounding_box_test")

# PPPP_cCsS_FFFFFF_NN.jpg, e.g. 0002_c1s1_000451_03.jpg; pid -1 marks junk.
_MARKET_NAME = re.compile(
    r"^(?P<pid>-1|\d{4})_c(?P<cam>[1-9])s(?P<seq>\d)_(?P<frame>\d{6})"
    r"_(?P<box>\d{2})\.jpg$")

JUNK_PID = -1
DISTRACTOR_PID = 0

MARKET1501_HELP = f"""\
Expected layout (directly under the root, or under
<root>/{MARKET1501_ARCHIVE_DIR}/ as unzipped from the official archive):
  <root>/
    bounding_box_train/   training images  (Market-1501: 12,936 images)
    query/                query images     (Market-1501: 3,368 images)
    bounding_box_test/    gallery images   (Market-1501: 19,732 images)
File names: PPPP_cCsS_FFFFFF_NN.jpg, e.g. 0002_c1s1_000451_03.jpg
  PPPP    4-digit person id; 0000 = distractor, -1 = junk (both gallery only)
  C       camera, 1-based;  S = sequence;  FFFFFF = frame;  NN = box index
To get the data: download the official Market-1501 archive
({MARKET1501_ARCHIVE_DIR}.zip), unzip it, and point --config.data.root at the
unzipped folder. To try the pipeline without it, write the synthetic set with
reidjax.data.synthetic.write_synthetic_market(root) and point
--config.data.root there instead."""


class LayoutError(ValueError):
  """A dataset folder exists but does not follow the expected layout."""


class DatasetNotFoundError(LayoutError, FileNotFoundError):
  """A dataset root or one of its split folders is missing."""


def _resolve_market_root(root: str) -> str:
  """Returns the folder that holds the three split folders, or raises."""
  if not os.path.isdir(root):
    raise DatasetNotFoundError(
        f"Market-1501 root {root!r} does not exist or is not a folder.\n"
        f"{MARKET1501_HELP}")
  candidates = [root, os.path.join(root, MARKET1501_ARCHIVE_DIR)]
  for cand in candidates:
    if all(os.path.isdir(os.path.join(cand, s)) for s in MARKET1501_SPLITS):
      return cand
  # Report against whichever candidate is partially there, so the message
  # names the folders that are actually missing rather than all of them.
  base = root
  for cand in candidates:
    if any(os.path.isdir(os.path.join(cand, s)) for s in MARKET1501_SPLITS):
      base = cand
      break
  missing = [s for s in MARKET1501_SPLITS
             if not os.path.isdir(os.path.join(base, s))]
  raise DatasetNotFoundError(
      f"Market-1501 root {root!r} is missing split folder(s) "
      f"{', '.join(repr(m + '/') for m in missing)} (looked in {base!r}).\n"
      f"{MARKET1501_HELP}")


def _read_market_split(folder: str) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Parses every .jpg in `folder`: sorted paths, raw pids, 0-based camids."""
  # Non-.jpg files (Thumbs.db, README) and macOS '._' resource forks are
  # not images of the dataset; anything else that ends in .jpg must parse.
  names = sorted(n for n in os.listdir(folder)
                 if n.lower().endswith(".jpg") and not n.startswith("."))
  if not names:
    raise LayoutError(
        f"Split folder {folder!r} contains no .jpg images.\n{MARKET1501_HELP}")
  paths, pids, camids = [], [], []
  for n in names:
    m = _MARKET_NAME.match(n)
    if m is None:
      raise LayoutError(
          f"Image file name {n!r} in {folder!r} does not match the Market-1501 "
          "pattern PPPP_cCsS_FFFFFF_NN.jpg (e.g. 0002_c1s1_000451_03.jpg). "
          "Remove or rename it.")
    paths.append(os.path.join(folder, n))
    pids.append(int(m["pid"]))
    camids.append(int(m["cam"]) - 1)
  return paths, np.asarray(pids, np.int32), np.asarray(camids, np.int32)


def _split(paths, pids, camids, keep) -> ImageSplit:
  idx = np.flatnonzero(keep)
  return ImageSplit(paths=tuple(paths[i] for i in idx),
                    pids=pids[idx].astype(np.int32),
                    camids=camids[idx].astype(np.int32))


def parse_market1501(root: str, *, name: str = "market1501") -> ImageDataset:
  """Indexes a Market-1501 folder under the standard evaluation protocol.

  Junk images (pid -1) are dropped from every split; distractors (pid 0) are
  kept in the gallery only. Train pids are relabelled 0..P-1 in sorted order of
  the original pid (so every process derives the same labels); query and
  gallery keep the original pids. Camera ids become 0-based.

  Args:
    root: the folder holding bounding_box_train/, query/, bounding_box_test/,
      or its parent when those sit under Market-1501-v15.09.15/.
    name: dataset name recorded in the index.

  Returns:
    The `ImageDataset` index, with paths sorted within each split.

  Raises:
    DatasetNotFoundError: root or a split folder is missing.
    LayoutError: a split has no images or an image name does not parse.
  """
  base = _resolve_market_root(os.fspath(root))
  train_dir, query_dir, gallery_dir = (
      os.path.join(base, s) for s in MARKET1501_SPLITS)

  paths, pids, camids = _read_market_split(train_dir)
  train = _split(paths, pids, camids, pids > DISTRACTOR_PID)
  if not len(train):
    raise LayoutError(
        f"Split folder {train_dir!r} holds only junk/distractor images "
        "(pid -1 or 0000); training needs real identities.")
  # np.unique is sorted, so the relabelling depends only on the file names.
  _, labels = np.unique(train.pids, return_inverse=True)
  train = ImageSplit(train.paths, labels.astype(np.int32), train.camids)

  paths, pids, camids = _read_market_split(query_dir)
  query = _split(paths, pids, camids, pids > DISTRACTOR_PID)
  if not len(query):
    raise LayoutError(
        f"Split folder {query_dir!r} holds no query images with a real "
        "identity (only pid -1 or 0000).")

  paths, pids, camids = _read_market_split(gallery_dir)
  gallery = _split(paths, pids, camids, pids != JUNK_PID)

  return ImageDataset(name=name, root=base, train=train, query=query,
                      gallery=gallery)


LAYOUTS: dict[str, Callable[..., ImageDataset]] = {
    "market1501": parse_market1501,
}


def parse_dataset(name: str, root: str) -> ImageDataset:
  """Parses the dataset `name` (a key of `LAYOUTS`) found at `root`."""
  try:
    parser = LAYOUTS[name]
  except KeyError:
    raise ValueError(
        f"Unknown dataset layout {name!r}; known layouts: "
        f"{', '.join(sorted(LAYOUTS))}.") from None
  return parser(root, name=name)
