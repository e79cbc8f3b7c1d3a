"""MSMT17 (Wei et al., CVPR 2018), releases V1 and V2, from its list files.

Training split, and a reading taken here: the archive's training images are
listed in two files, ``list_train.txt`` (30,248 images) and
``list_val.txt`` (2,373 images of the same 1,041 identities). The paper's
"training set" of 32,621 images is their union, but torchreid and fast-reid
train on ``list_train.txt`` ALONE unless asked to combine splits, and the
published results they reproduce are comparable to that. So the default here
is list_train only (1,041 ids / 30,248 images); ``include_val=True``
(``data.options.include_val``) trains on list_train + list_val (1,041 ids /
32,621 images). Either way train pids are relabelled 0..P-1 in sorted order
of the list pids. Plain Python/NumPy, no TensorFlow.
"""

from __future__ import annotations

import os
import re

import numpy as np

from reidjax.data.index import ImageDataset, ImageSplit
from reidjax.data.layout_common import (DatasetNotFoundError, LayoutError,
                                        Stats, candidate_roots,
                                        check_statistics, contiguous_labels)

MSMT17_ARCHIVE_DIRS = ("MSMT17_V1", "MSMT17_V2")
# Image folders (train, test) of each release.
MSMT17_VERSIONS = {"V1": ("train", "test"),
                   "V2": ("mask_train_v2", "mask_test_v2")}
MSMT17_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt",
                "list_gallery.txt")

# Official (ids, images) per split, as `check_statistics` counts them. The
# query and gallery are the same with or without list_val.
MSMT17_STATS: Stats = {
    "train": (1041, 30248), "query": (3060, 11659), "gallery": (3060, 82161)}
MSMT17_WITH_VAL_STATS: Stats = {**MSMT17_STATS, "train": (1041, 32621)}

# PPPP_III_CC_<date><time>_FFFF_N.jpg, e.g. 0000_000_01_0303morning_0015_0.jpg;
# the third field is the camera, 1-based (1..15).
MSMT17_NAME = re.compile(r"^(?P<pid>\d{4})_\d+_(?P<cam>\d{2})_[^/]+\.jpg$")
MSMT17_FORMAT = ("PPPP_NNN_CC_<date><time>_FFFF_N.jpg "
                 "(e.g. 0000_000_01_0303morning_0015_0.jpg)")
MSMT17_NUM_CAMS = 15

MSMT17_HELP = """\
Expected layout (directly under the root, or under <root>/MSMT17_V1/ or
<root>/MSMT17_V2/ as unzipped from the archive):
  <root>/
    train/  test/                     V1 image folders, or
    mask_train_v2/  mask_test_v2/     V2 image folders
    list_train.txt  list_val.txt      lines '<path relative to train/> <pid>'
    list_query.txt  list_gallery.txt  lines '<path relative to test/> <pid>'
Image names: PPPP_NNN_CC_<date><time>_FFFF_N.jpg, CC = camera (1..15).
MSMT17: request the archive from the authors of Wei et al., CVPR 2018
(www.pkuvmc.com, "MSMT17"), unzip it and point --config.data.root at it."""


def _resolve_msmt_root(root: str) -> tuple[str, str, str]:
  """Returns (base, train folder name, test folder name) of an MSMT17 copy."""
  candidates = candidate_roots(root, label="MSMT17",
                               archive_dirs=MSMT17_ARCHIVE_DIRS,
                               help_text=MSMT17_HELP)
  for cand in candidates:
    for train_dir, test_dir in MSMT17_VERSIONS.values():
      if (os.path.isdir(os.path.join(cand, train_dir))
          and os.path.isdir(os.path.join(cand, test_dir))):
        missing = [f for f in MSMT17_LISTS
                   if not os.path.isfile(os.path.join(cand, f))]
        if missing:
          raise DatasetNotFoundError(
              f"MSMT17 root {root!r} is missing list file(s) "
              f"{', '.join(map(repr, missing))} (looked in {cand!r}).\n"
              f"{MSMT17_HELP}")
        return cand, train_dir, test_dir
  raise DatasetNotFoundError(
      f"MSMT17 root {root!r} has neither 'train/' + 'test/' (V1) nor "
      f"'mask_train_v2/' + 'mask_test_v2/' (V2) image folders (looked in "
      f"{', '.join(map(repr, candidates))}).\n{MSMT17_HELP}")


def read_msmt17_list(list_file: str, image_dir: str) -> ImageSplit:
  """Reads '<relative path> <pid>' lines, in list order.

  Args:
    list_file: one of the archive's list files.
    image_dir: the folder the listed paths are relative to.

  Returns:
    The listed images with the list's pids (not relabelled) and 0-based
    cameras, taken from the third '_' field of each file name.

  Raises:
    LayoutError: a line or a file name does not parse, or the list is empty.
    DatasetNotFoundError: a listed image does not exist.
  """
  paths, pids, camids = [], [], []
  try:
    with open(list_file, encoding="utf-8") as f:
      lines = f.readlines()
  except UnicodeDecodeError as e:
    raise LayoutError(
        f"List file {list_file!r} is not a text file of '<relative path> "
        f"<pid>' lines ({e}). Replace it with the original of the MSMT17 "
        "archive.") from e
  for lineno, line in enumerate(lines, 1):
    if not line.strip():
      continue
    fields = line.split()
    # ASCII digits that fit the int32 pids (str.isdigit() also accepts
    # e.g. superscripts, which int() cannot read).
    if len(fields) != 2 or re.fullmatch(r"[0-9]{1,9}", fields[1]) is None:
      raise LayoutError(
          f"{list_file}:{lineno}: expected '<relative path> <pid>' (pid a "
          f"non-negative integer below 10^9), got {line.rstrip()!r}. Fix or "
          "remove the line, or replace the list file with the original of "
          "the MSMT17 archive.")
    rel, pid = fields
    fname = rel.replace("\\", "/").rsplit("/", 1)[-1]
    m = MSMT17_NAME.match(fname)
    if m is None or not 1 <= int(m["cam"]) <= MSMT17_NUM_CAMS:
      raise LayoutError(
          f"Image file name {fname!r} ({list_file}:{lineno}) does not match "
          f"the MSMT17 pattern {MSMT17_FORMAT} with camera 01..15.")
    path = os.path.join(image_dir, rel)
    if not os.path.isfile(path):
      raise DatasetNotFoundError(
          f"{list_file}:{lineno} names {rel!r}, but {path!r} does not "
          f"exist.\n{MSMT17_HELP}")
    paths.append(path)
    pids.append(int(pid))
    camids.append(int(m["cam"]) - 1)
  if not paths:
    raise LayoutError(
        f"List file {list_file!r} names no images. Replace it with the "
        "original of the MSMT17 archive.")
  return ImageSplit(tuple(paths), np.asarray(pids, np.int32),
                    np.asarray(camids, np.int32))


def parse_msmt17(root: str, *, name: str = "msmt17",
                 include_val: bool = False) -> ImageDataset:
  """Indexes an MSMT17 folder, release V1 or V2.

  Folder tree (directly under `root`, or under `root`/MSMT17_V1/ or
  `root`/MSMT17_V2/)::

    MSMT17_V1/                      MSMT17_V2/
      train/0000/0000_000_01_...jpg   mask_train_v2/0000/...jpg
      test/0000/...jpg                mask_test_v2/0000/...jpg
      list_train.txt  list_val.txt  list_query.txt  list_gallery.txt

  The archive is distributed by the authors of Wei et al. (CVPR 2018) on
  request. Each list line is '<path relative to the image folder> <pid>';
  train/val lists are relative to the train folder, query/gallery lists to the
  test folder. The camera is the third '_' field of the file name, 1-based
  (1..15), stored 0-based. Paths keep list order. Query/gallery keep the list
  pids.

  Args:
    root: the folder described above.
    name: dataset name recorded in the index.
    include_val: False (default): train = list_train only (1,041 ids /
      30,248 images), as torchreid and fast-reid train by default and as
      published MSMT17 results are reported. True: train = list_train
      followed by list_val (1,041 ids / 32,621 images, the paper's training
      set). Train pids are relabelled 0..P-1 in sorted pid order over the
      images used. A complete copy is checked against `MSMT17_STATS` or
      `MSMT17_WITH_VAL_STATS` accordingly.

  Raises:
    DatasetNotFoundError: root, image folders, a list file or a listed image
      is missing (list_val.txt is required either way: it is part of every
      release, and its absence means an incomplete copy).
    LayoutError: a list line or an image name does not parse.
    StatisticsError: a complete-looking copy has the wrong counts.
  """
  if not isinstance(include_val, bool):
    raise ValueError(
        f"MSMT17 option include_val must be True or False, got "
        f"{include_val!r}.")
  base, train_dir, test_dir = _resolve_msmt_root(os.fspath(root))
  train_dir, test_dir = (os.path.join(base, d) for d in (train_dir, test_dir))

  def read(list_name, image_dir):
    return read_msmt17_list(os.path.join(base, list_name), image_dir)

  train = read("list_train.txt", train_dir)
  # Read (and so check) list_val even when it is not trained on.
  val = read("list_val.txt", train_dir)
  if include_val:
    train = ImageSplit(train.paths + val.paths,
                       np.concatenate([train.pids, val.pids]),
                       np.concatenate([train.camids, val.camids]))
  train = ImageSplit(train.paths, contiguous_labels(train.pids), train.camids)
  ds = ImageDataset(name=name, root=base, train=train,
                    query=read("list_query.txt", test_dir),
                    gallery=read("list_gallery.txt", test_dir))
  check_statistics(ds, MSMT17_WITH_VAL_STATS if include_val
                   else MSMT17_STATS)
  return ds
