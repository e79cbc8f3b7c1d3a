"""Parsers that turn a dataset folder on disk into an `ImageDataset` index.

Plain Python/NumPy: nothing here imports TensorFlow, so the index can be built
(and checked) on any host. Each parser enforces its dataset's evaluation
protocol (which ids are junk, which are distractors, how train ids are
relabelled), so that every consumer of the index sees the same splits.

This module also holds the helpers shared with `reidjax.data.cuhk03` and
`reidjax.data.video_layouts`, and the registry `parse_dataset` of every
dataset name (image and video); the parsers of those two modules are imported
only when their dataset is asked for, so they can import from here.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import os
import re
from typing import Callable, Mapping

import numpy as np

from reidjax.data.index import Dataset, ImageDataset, ImageSplit, is_video

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


class StatisticsError(LayoutError):
  """A complete-looking copy of a dataset has the wrong id/image counts."""


_log = logging.getLogger(__name__)

# Official (ids, images) per split, as counted by the parsers here: ids are
# the distinct pids of the parsed split (`ImageSplit.num_pids`), which for the
# Market-1501 gallery INCLUDES the distractor pid 0 (750 real ids + 0 = 751)
# and images are counted after junk (pid -1) is dropped (19,732 files - 3,819
# junk = 15,913). These are the numbers torchreid prints for these datasets.
Stats = Mapping[str, tuple[int, int]]
MARKET1501_STATS: Stats = {
    "train": (751, 12936), "query": (750, 3368), "gallery": (751, 15913)}
DUKEMTMC_STATS: Stats = {
    "train": (702, 16522), "query": (702, 2228), "gallery": (1110, 17661)}
OCCLUDED_DUKE_STATS: Stats = {
    "train": (702, 15618), "query": (519, 2210), "gallery": (1110, 17661)}
MSMT17_STATS: Stats = {
    "train": (1041, 32621), "query": (3060, 11659), "gallery": (3060, 82161)}


def check_statistics(dataset: Dataset, expected: Stats) -> bool:
  """Checks a parsed dataset against its official per-split statistics.

  Only a copy that looks complete is checked: if every split has at least
  the expected number of ids and of items, any difference is an error (e.g.
  extra files copied in, a mixed-up release). If any count is below the
  official one, the copy is taken to be partial (a subset, a test fixture)
  and this is only logged.

  Args:
    dataset: the parsed index, an `ImageDataset` (items = images) or a
      `VideoDataset` (items = tracklets).
    expected: split name -> (ids, items), ids counted as the split's
      `num_pids` (distinct pids, distractor pid 0 included).

  Returns:
    True if the copy looked complete and matched; False if it is partial.

  Raises:
    StatisticsError: the copy looks complete but a count differs.
  """
  unit = "tracklets" if is_video(dataset) else "images"
  got = {k: (getattr(dataset, k).num_pids, len(getattr(dataset, k)))
         for k in expected}
  complete = all(g >= e for k in expected for g, e in zip(got[k], expected[k]))
  if not complete:
    _log.info("%s at %s looks like a partial copy (ids, %s) %s; official "
              "%s. Not checking statistics.", dataset.name, dataset.root,
              unit, got, dict(expected))
    return False
  bad = [f"{k}: got {got[k][0]} ids / {got[k][1]} {unit}, expected "
         f"{expected[k][0]} / {expected[k][1]}"
         for k in expected if got[k] != tuple(expected[k])]
  if bad:
    raise StatisticsError(
        f"{dataset.name} at {dataset.root!r} looks complete but does not match "
        f"the official statistics ({'; '.join(bad)}). Check that the folder "
        "holds exactly one, unmodified copy of the dataset.")
  return True


def _candidate_roots(root: str, *, label: str, archive_dirs: tuple[str, ...],
                     help_text: str) -> list[str]:
  """[root, root/<archive dir>, ...]; raises if `root` is not a folder."""
  if not os.path.isdir(root):
    raise DatasetNotFoundError(
        f"{label} root {root!r} does not exist or is not a folder.\n"
        f"{help_text}")
  return [root] + [os.path.join(root, a) for a in archive_dirs]


def _resolve_root(root: str, *, label: str, archive_dirs: tuple[str, ...],
                  splits: tuple[str, ...], help_text: str) -> str:
  """Returns the folder (root or root/<archive dir>) holding `splits`."""
  candidates = _candidate_roots(root, label=label, archive_dirs=archive_dirs,
                                help_text=help_text)
  for cand in candidates:
    if all(os.path.isdir(os.path.join(cand, s)) for s in splits):
      return cand
  # Report against whichever candidate is partially there, so the message
  # names the folders that are actually missing rather than all of them.
  base = root
  for cand in candidates:
    if any(os.path.isdir(os.path.join(cand, s)) for s in splits):
      base = cand
      break
  missing = [s for s in splits if not os.path.isdir(os.path.join(base, s))]
  raise DatasetNotFoundError(
      f"{label} root {root!r} is missing split folder(s) "
      f"{', '.join(repr(m + '/') for m in missing)} (looked in {base!r}).\n"
      f"{help_text}")


def _resolve_market_root(root: str) -> str:
  """Returns the folder that holds the three split folders, or raises."""
  return _resolve_root(root, label="Market-1501",
                       archive_dirs=(MARKET1501_ARCHIVE_DIR,),
                       splits=MARKET1501_SPLITS, help_text=MARKET1501_HELP)


def _read_split(folder: str, pattern: re.Pattern, *, label: str,
                name_format: str, help_text: str,
                ) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Parses every .jpg in a flat split folder whose names match `pattern`.

  `pattern` must define the groups `pid` and `cam` (camera, 1-based).

  Returns:
    Sorted paths, raw pids and 0-based camids.
  """
  # Non-.jpg files (Thumbs.db, README) and macOS '._' resource forks are
  # not images of the dataset; anything else that ends in .jpg must parse.
  names = sorted(n for n in os.listdir(folder)
                 if n.lower().endswith(".jpg") and not n.startswith("."))
  if not names:
    raise LayoutError(
        f"Split folder {folder!r} contains no .jpg images.\n{help_text}")
  paths, pids, camids = [], [], []
  for n in names:
    m = pattern.match(n)
    if m is None:
      raise LayoutError(
          f"Image file name {n!r} in {folder!r} does not match the {label} "
          f"pattern {name_format}. Remove or rename it.")
    paths.append(os.path.join(folder, n))
    pids.append(int(m["pid"]))
    camids.append(int(m["cam"]) - 1)
  return paths, np.asarray(pids, np.int32), np.asarray(camids, np.int32)


def _read_market_split(folder: str) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Parses every .jpg in `folder`: sorted paths, raw pids, 0-based camids."""
  return _read_split(
      folder, _MARKET_NAME, label="Market-1501",
      name_format="PPPP_cCsS_FFFFFF_NN.jpg (e.g. 0002_c1s1_000451_03.jpg)",
      help_text=MARKET1501_HELP)


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

  dataset = ImageDataset(name=name, root=base, train=train, query=query,
                         gallery=gallery)
  check_statistics(dataset, MARKET1501_STATS)
  return dataset


# ---------------------------------------------------------------- DukeMTMC --

DUKEMTMC_ARCHIVE_DIR = "DukeMTMC-reID"
OCCLUDED_DUKE_ARCHIVE_DIR = "Occluded_Duke"

# PPPP_cC_fFFFFFFF.jpg, e.g. 0005_c2_f0046985.jpg; 8 cameras, no junk ids.
_DUKE_NAME = re.compile(
    r"^(?P<pid>\d{4})_c(?P<cam>[1-8])_f(?P<frame>\d{7})\.jpg$")
_DUKE_FORMAT = "PPPP_cC_fFFFFFFF.jpg (e.g. 0005_c2_f0046985.jpg)"


def _duke_help(label: str, archive_dir: str, origin: str) -> str:
  return f"""\
Expected layout (directly under the root, or under <root>/{archive_dir}/ as
unzipped from the archive):
  <root>/
    bounding_box_train/   training images
    query/                query images
    bounding_box_test/    gallery images
File names: {_DUKE_FORMAT}
  PPPP    4-digit person id;  C = camera, 1-based (1..8);  FFFFFFF = frame
{label}: {origin}
Point --config.data.root at the unzipped folder."""


DUKEMTMC_HELP = _duke_help(
    "DukeMTMC-reID", DUKEMTMC_ARCHIVE_DIR,
    "the DukeMTMC-reID.zip archive released with Zheng et al., ICCV 2017\n"
    "(github.com/layumi/DukeMTMC-reID_evaluation); the source DukeMTMC data\n"
    "has been withdrawn, so use a copy obtained under its original terms.")
OCCLUDED_DUKE_HELP = _duke_help(
    "Occluded-DukeMTMC", OCCLUDED_DUKE_ARCHIVE_DIR,
    "built from DukeMTMC-reID with the scripts of Miao et al., ICCV 2019\n"
    "(github.com/lightas/Occluded-DukeMTMC-Dataset), which write\n"
    "Occluded_Duke/.")


def _parse_flat_splits(root: str, *, name: str, label: str,
                       archive_dirs: tuple[str, ...], pattern: re.Pattern,
                       name_format: str, help_text: str) -> ImageDataset:
  """Market-style layout without junk/distractor ids (DukeMTMC and kin)."""
  base = _resolve_root(os.fspath(root), label=label, archive_dirs=archive_dirs,
                       splits=MARKET1501_SPLITS, help_text=help_text)
  splits = []
  for s in MARKET1501_SPLITS:
    paths, pids, camids = _read_split(
        os.path.join(base, s), pattern, label=label, name_format=name_format,
        help_text=help_text)
    splits.append(ImageSplit(tuple(paths), pids, camids))
  train, query, gallery = splits
  _, labels = np.unique(train.pids, return_inverse=True)
  train = ImageSplit(train.paths, labels.astype(np.int32), train.camids)
  return ImageDataset(name=name, root=base, train=train, query=query,
                      gallery=gallery)


def parse_dukemtmc(root: str, *, name: str = "dukemtmc") -> ImageDataset:
  """Indexes a DukeMTMC-reID folder.

  Folder tree (directly under `root`, or under `root`/DukeMTMC-reID/)::

    DukeMTMC-reID/
      bounding_box_train/   0005_c2_f0046985.jpg ...  (702 ids, 16,522 images)
      query/                                          (702 ids,  2,228 images)
      bounding_box_test/                              (1,110 ids, 17,661 images)

  The official files are the DukeMTMC-reID.zip archive of Zheng et al.
  (ICCV 2017, github.com/layumi/DukeMTMC-reID_evaluation). There are no junk
  or distractor pids: every image is kept (the 408 gallery-only ids are
  ordinary ids). Train pids are relabelled 0..P-1 in sorted pid order; query
  and gallery keep the original pids; camera ids become 0-based (0..7). A
  complete copy is checked against `DUKEMTMC_STATS`.

  Raises:
    DatasetNotFoundError: root or a split folder is missing.
    LayoutError: a split has no images or an image name does not parse.
    StatisticsError: a complete-looking copy has the wrong counts.
  """
  ds = _parse_flat_splits(
      root, name=name, label="DukeMTMC-reID",
      archive_dirs=(DUKEMTMC_ARCHIVE_DIR,), pattern=_DUKE_NAME,
      name_format=_DUKE_FORMAT, help_text=DUKEMTMC_HELP)
  check_statistics(ds, DUKEMTMC_STATS)
  return ds


def parse_occluded_duke(root: str, *,
                        name: str = "occluded_duke") -> ImageDataset:
  """Indexes an Occluded-DukeMTMC folder.

  Folder tree (directly under `root`, or under `root`/Occluded_Duke/)::

    Occluded_Duke/
      bounding_box_train/   0005_c2_f0046985.jpg ...  (702 ids, 15,618 images)
      query/                                          (519 ids,  2,210 images)
      bounding_box_test/                              (1,110 ids, 17,661 images)

  The folder is produced from DukeMTMC-reID by the scripts of Miao et al.
  (ICCV 2019, github.com/lightas/Occluded-DukeMTMC-Dataset). Same naming and
  protocol as `parse_dukemtmc`; checked against `OCCLUDED_DUKE_STATS`.
  """
  ds = _parse_flat_splits(
      root, name=name, label="Occluded-DukeMTMC",
      archive_dirs=(OCCLUDED_DUKE_ARCHIVE_DIR,), pattern=_DUKE_NAME,
      name_format=_DUKE_FORMAT, help_text=OCCLUDED_DUKE_HELP)
  check_statistics(ds, OCCLUDED_DUKE_STATS)
  return ds


# ------------------------------------------------------------------ MSMT17 --

MSMT17_ARCHIVE_DIRS = ("MSMT17_V1", "MSMT17_V2")
# Image folders (train, test) of each release.
MSMT17_VERSIONS = {"V1": ("train", "test"),
                   "V2": ("mask_train_v2", "mask_test_v2")}
MSMT17_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt",
                "list_gallery.txt")

# PPPP_III_CC_<date><time>_FFFF_N.jpg, e.g. 0000_000_01_0303morning_0015_0.jpg;
# the third field is the camera, 1-based (1..15).
_MSMT_NAME = re.compile(r"^(?P<pid>\d{4})_\d+_(?P<cam>\d{2})_[^/]+\.jpg$")
_MSMT_FORMAT = ("PPPP_NNN_CC_<date><time>_FFFF_N.jpg "
                "(e.g. 0000_000_01_0303morning_0015_0.jpg)")

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
  """Returns (base, train folder, test folder) of an MSMT17 copy."""
  candidates = _candidate_roots(root, label="MSMT17",
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


def _read_msmt_list(list_file: str, image_dir: str,
                    ) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Reads '<relative path> <pid>' lines; camids from the file names."""
  paths, pids, camids = [], [], []
  with open(list_file) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      fields = line.split()
      if len(fields) != 2 or not fields[1].isdigit():
        raise LayoutError(
            f"{list_file}:{lineno}: expected '<relative path> <pid>', got "
            f"{line.rstrip()!r}.")
      rel, pid = fields
      fname = rel.replace("\\", "/").rsplit("/", 1)[-1]
      m = _MSMT_NAME.match(fname)
      if m is None or not 1 <= int(m["cam"]) <= 15:
        raise LayoutError(
            f"Image file name {fname!r} ({list_file}:{lineno}) does not match "
            f"the MSMT17 pattern {_MSMT_FORMAT} with camera 01..15.")
      path = os.path.join(image_dir, rel)
      if not os.path.isfile(path):
        raise DatasetNotFoundError(
            f"{list_file}:{lineno} names {rel!r}, but {path!r} does not "
            f"exist.\n{MSMT17_HELP}")
      paths.append(path)
      pids.append(int(pid))
      camids.append(int(m["cam"]) - 1)
  if not paths:
    raise LayoutError(f"List file {list_file!r} names no images.")
  return paths, np.asarray(pids, np.int32), np.asarray(camids, np.int32)


def parse_msmt17(root: str, *, name: str = "msmt17") -> ImageDataset:
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
  test folder. Train = list_train + list_val (the torchreid convention, which
  gives the official 1,041 ids / 32,621 images), pids relabelled 0..P-1 in
  sorted order; query/gallery keep the list pids. The camera is the third '_'
  field of the file name, 1-based (1..15), stored 0-based. Paths keep list
  order. A complete copy is checked against `MSMT17_STATS`.

  Raises:
    DatasetNotFoundError: root, image folders, a list file or a listed image
      is missing.
    LayoutError: a list line or an image name does not parse.
    StatisticsError: a complete-looking copy has the wrong counts.
  """
  base, train_dir, test_dir = _resolve_msmt_root(os.fspath(root))
  train_dir, test_dir = (os.path.join(base, d) for d in (train_dir, test_dir))
  lists = {f: os.path.join(base, f) for f in MSMT17_LISTS}
  tp, tpid, tcam = _read_msmt_list(lists["list_train.txt"], train_dir)
  vp, vpid, vcam = _read_msmt_list(lists["list_val.txt"], train_dir)
  _, labels = np.unique(np.concatenate([tpid, vpid]), return_inverse=True)
  train = ImageSplit(tuple(tp + vp), labels.astype(np.int32),
                     np.concatenate([tcam, vcam]).astype(np.int32))
  query = ImageSplit(*_tuple_paths(
      _read_msmt_list(lists["list_query.txt"], test_dir)))
  gallery = ImageSplit(*_tuple_paths(
      _read_msmt_list(lists["list_gallery.txt"], test_dir)))
  ds = ImageDataset(name=name, root=base, train=train, query=query,
                    gallery=gallery)
  check_statistics(ds, MSMT17_STATS)
  return ds


def _tuple_paths(read):
  paths, pids, camids = read
  return tuple(paths), pids, camids


# ------------------------------------------------------------------ custom --

CUSTOM_SPLITS = ("train", "query", "gallery")
_CUSTOM_NAME = re.compile(r"^(?P<cam>\d+)_.*\.(jpg|jpeg|png)$", re.IGNORECASE)
CUSTOM_HELP = """\
Expected layout (your own data):
  <root>/
    train/<pid>/<camid>_<anything>.jpg
    query/<pid>/<camid>_<anything>.jpg
    gallery/<pid>/<camid>_<anything>.jpg
  <pid>    folder named by a non-negative integer person id
  <camid>  non-negative integer camera id, 0-BASED (used as is), e.g.
           train/17/0_frame0003.jpg is person 17 seen by camera 0.
  Images may be .jpg, .jpeg or .png; other files are ignored."""


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
  base = _resolve_root(os.fspath(root), label="Custom dataset",
                       archive_dirs=(), splits=CUSTOM_SPLITS,
                       help_text=CUSTOM_HELP)
  splits = {}
  for s in CUSTOM_SPLITS:
    split_dir = os.path.join(base, s)
    paths, pids, camids = [], [], []
    for entry in sorted(os.listdir(split_dir)):
      pid_dir = os.path.join(split_dir, entry)
      if entry.startswith(".") or not os.path.isdir(pid_dir):
        continue
      if not entry.isdigit():
        raise LayoutError(
            f"Folder {pid_dir!r} is not named by an integer person id.\n"
            f"{CUSTOM_HELP}")
      for fname in sorted(os.listdir(pid_dir)):
        if fname.startswith(".") or not fname.lower().endswith(
            (".jpg", ".jpeg", ".png")):
          continue
        m = _CUSTOM_NAME.match(fname)
        if m is None:
          raise LayoutError(
              f"Image file name {fname!r} in {pid_dir!r} does not match "
              f"'<camid>_<anything>.jpg' (camid a 0-based integer).")
        paths.append(os.path.join(pid_dir, fname))
        pids.append(int(entry))
        camids.append(int(m["cam"]))
    if not paths:
      raise LayoutError(
          f"Split folder {split_dir!r} contains no images.\n{CUSTOM_HELP}")
    order = np.argsort(paths, kind="stable")
    splits[s] = ImageSplit(tuple(paths[i] for i in order),
                           np.asarray(pids, np.int32)[order],
                           np.asarray(camids, np.int32)[order])
  train = splits["train"]
  _, labels = np.unique(train.pids, return_inverse=True)
  train = ImageSplit(train.paths, labels.astype(np.int32), train.camids)
  return ImageDataset(name=name, root=base, train=train,
                      query=splits["query"], gallery=splits["gallery"])


# ---------------------------------------------------------------- registry --


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the parser of one dataset name lives, and what it is called with.

  The parser is looked up by module and function name when first needed, so
  that this module need not import `cuhk03` / `video_layouts` (which import
  their shared helpers from here).

  Attributes:
    module: dotted module path of the parser.
    parser: function name in that module; called as
      ``parser(root, name=<dataset name>, **fixed, **options)``.
    fixed: keyword arguments implied by the name (e.g. the CUHK03 variant);
      not accepted as user options.
    video: the parser returns a `VideoDataset`.
  """

  module: str
  parser: str
  fixed: Mapping[str, object] = dataclasses.field(default_factory=dict)
  video: bool = False

  def resolve(self) -> Callable[..., Dataset]:
    return getattr(importlib.import_module(self.module), self.parser)


_HERE = __name__
_VIDEO_MODULE = "reidjax.data.video_layouts"

LAYOUTS: dict[str, Layout] = {
    "market1501": Layout(_HERE, "parse_market1501"),
    "dukemtmc": Layout(_HERE, "parse_dukemtmc"),
    "occluded_duke": Layout(_HERE, "parse_occluded_duke"),
    "msmt17": Layout(_HERE, "parse_msmt17"),
    "custom": Layout(_HERE, "parse_custom"),
    "cuhk03_labeled": Layout("reidjax.data.cuhk03", "parse_cuhk03",
                             {"variant": "labeled"}),
    "cuhk03_detected": Layout("reidjax.data.cuhk03", "parse_cuhk03",
                              {"variant": "detected"}),
    "mars": Layout(_VIDEO_MODULE, "parse_mars", video=True),
    "dukemtmc_video": Layout(_VIDEO_MODULE, "parse_dukemtmc_video",
                             video=True),
    "ilidsvid": Layout(_VIDEO_MODULE, "parse_ilidsvid", video=True),
    "prid2011": Layout(_VIDEO_MODULE, "parse_prid2011", video=True),
}

# Names whose index is a `VideoDataset` (tracklets), not an `ImageDataset`.
VIDEO_LAYOUTS: frozenset[str] = frozenset(
    n for n, layout in LAYOUTS.items() if layout.video)


def layout_options(name: str) -> tuple[str, ...]:
  """The options (keyword arguments) `parse_dataset(name, ...)` accepts."""
  layout = _layout(name)
  params = inspect.signature(layout.resolve()).parameters.values()
  return tuple(p.name for p in params
               if p.kind is inspect.Parameter.KEYWORD_ONLY
               and p.name != "name" and p.name not in layout.fixed)


def _layout(name: str) -> Layout:
  try:
    return LAYOUTS[name]
  except KeyError:
    raise ValueError(
        f"Unknown dataset layout {name!r}; known layouts: "
        f"{', '.join(sorted(LAYOUTS))}.") from None


def parse_dataset(name: str, root: str, **options) -> Dataset:
  """Parses the dataset `name` (a key of `LAYOUTS`) found at `root`.

  Args:
    name: dataset name; also recorded as the index's name.
    root: the dataset folder.
    **options: passed to the parser, e.g. ``split_index=3`` for iLIDS-VID or
      PRID-2011; see `layout_options(name)`.

  Returns:
    An `ImageDataset`, or a `VideoDataset` for names in `VIDEO_LAYOUTS`.

  Raises:
    ValueError: unknown name, or an option the parser does not take.
  """
  layout = _layout(name)
  accepted = layout_options(name)
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ValueError(
        f"Dataset layout {name!r} does not take option(s) "
        f"{', '.join(map(repr, unknown))}; it accepts "
        f"{', '.join(map(repr, accepted)) if accepted else 'no options'}.")
  return layout.resolve()(root, name=name, **layout.fixed, **options)
