"""A user's own data in a pid-folder layout (no public dataset behind it).

Plain Python/NumPy, no TensorFlow. See `parse_custom` for the layout.
"""

from __future__ import annotations

import os
import re

import numpy as np

from reidjax.data.index import ImageDataset, ImageSplit
from reidjax.data.layout_common import LayoutError, relabel_train, resolve_root

CUSTOM_SPLITS = ("train", "query", "gallery")
CUSTOM_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# <camid>_<anything>.<jpg|jpeg|png>, camid a non-negative integer.
CUSTOM_NAME = re.compile(r"^(?P<cam>[0-9]+)_.*\.(jpg|jpeg|png)$", re.IGNORECASE)
# Ids are stored as int32.
_MAX_ID = np.iinfo(np.int32).max
CUSTOM_HELP = """\
Expected layout (your own data):
  <root>/
    train/<pid>/<camid>_<anything>.jpg
    query/<pid>/<camid>_<anything>.jpg
    gallery/<pid>/<camid>_<anything>.jpg
  <pid>    folder named by a non-negative integer person id
  <camid>  non-negative integer camera id, 0-BASED (used as is), e.g.
           train/17/0_frame0003.jpg is person 17 seen by camera 0.
  Images may be .jpg, .jpeg or .png; other files are ignored.
Point --config.data.root at <root> (with --config.data.name=custom)."""


def _read_pid_folders(split_dir: str) -> ImageSplit:
  """Every image under <split_dir>/<pid>/, sorted by path."""
  paths, pids, camids = [], [], []
  for entry in sorted(os.listdir(split_dir)):
    pid_dir = os.path.join(split_dir, entry)
    if entry.startswith(".") or not os.path.isdir(pid_dir):
      continue
    # ASCII digits only: str.isdigit() also accepts superscripts such as
    # '\u00b2', which int() cannot read.
    if re.fullmatch(r"[0-9]+", entry) is None:
      raise LayoutError(
          f"Folder {pid_dir!r} is not named by an integer person id. Rename "
          f"it to a non-negative integer (e.g. 17) or move it out of "
          f"{split_dir!r}.\n{CUSTOM_HELP}")
    if int(entry) > _MAX_ID:
      raise LayoutError(
          f"Person id folder {pid_dir!r} is larger than {_MAX_ID}; renumber "
          "the person ids from 0.")
    for fname in sorted(os.listdir(pid_dir)):
      if fname.startswith(".") or not fname.lower().endswith(
          CUSTOM_IMAGE_SUFFIXES):
        continue
      m = CUSTOM_NAME.match(fname)
      if m is None:
        raise LayoutError(
            f"Image file name {fname!r} in {pid_dir!r} does not match "
            f"'<camid>_<anything>.jpg' (camid a 0-based integer). Rename it, "
            f"e.g. to '0_{fname}', or move it out of the dataset.")
      if int(m["cam"]) > _MAX_ID:
        raise LayoutError(
            f"Camera id of {fname!r} in {pid_dir!r} is larger than {_MAX_ID}; "
            "number the cameras from 0.")
      paths.append(os.path.join(pid_dir, fname))
      pids.append(int(entry))
      camids.append(int(m["cam"]))
  if not paths:
    raise LayoutError(
        f"Split folder {split_dir!r} contains no images.\n{CUSTOM_HELP}")
  order = np.argsort(paths, kind="stable")
  return ImageSplit(tuple(paths[i] for i in order),
                    np.asarray(pids, np.int32)[order],
                    np.asarray(camids, np.int32)[order])


def parse_custom(root: str, *, name: str = "custom") -> ImageDataset:
  """Indexes a user's own data in a pid-folder layout.

  Folder tree::

    <root>/
      train/<pid>/<camid>_<anything>.jpg
      query/<pid>/<camid>_<anything>.jpg
      gallery/<pid>/<camid>_<anything>.jpg

  `<pid>` folders are non-negative integers; `<camid>` is a non-negative
  integer taken as 0-based (stored unchanged). Train pids are relabelled
  0..P-1 in sorted order; query and gallery keep the folder pids. No ids are
  treated as junk or distractors. Paths are sorted within each split.

  Raises:
    DatasetNotFoundError: root or a split folder is missing.
    LayoutError: a pid folder is not an integer, a file name does not start
      with '<camid>_', or a split has no images.
  """
  base = resolve_root(os.fspath(root), label="Custom dataset",
                      archive_dirs=(), splits=CUSTOM_SPLITS,
                      help_text=CUSTOM_HELP)
  train, query, gallery = (_read_pid_folders(os.path.join(base, s))
                           for s in CUSTOM_SPLITS)
  return ImageDataset(name=name, root=base, train=relabel_train(train),
                      query=query, gallery=gallery)
