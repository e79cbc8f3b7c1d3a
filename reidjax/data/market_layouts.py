"""Market-style image layouts: Market-1501, DukeMTMC-reID, Occluded-DukeMTMC.

All three ship three flat folders, ``bounding_box_train/``, ``query/`` and
``bounding_box_test/``, whose file names carry the person id and the camera.
Market-1501 (Zheng et al., ICCV 2015) marks junk (pid -1, dropped) and
distractors (pid 0, gallery only); the Duke sets (Zheng et al., ICCV 2017;
Miao et al., ICCV 2019) have neither, so every image is kept. Train pids are
relabelled 0..P-1 in sorted pid order; query and gallery keep the dataset's
pids; cameras become 0-based. Plain Python/NumPy, no TensorFlow.
"""

from __future__ import annotations

import os
import re

from reidjax.data.index import ImageDataset, ImageSplit
from reidjax.data.layout_common import (DISTRACTOR_PID, JUNK_PID, LayoutError,
                                        Stats, check_statistics,
                                        image_split_where, read_flat_split,
                                        relabel_train, resolve_root)

# The three split folders, in (train, query, gallery) order.
MARKET_STYLE_SPLITS = ("bounding_box_train", "query", "bounding_box_test")

# Official (ids, images) per split as `check_statistics` counts them: the
# Market-1501 gallery's ids INCLUDE the distractor pid 0 (750 real ids + 0 =
# 751) and its images exclude junk (19,732 files - 3,819 junk = 15,913).
# These are the numbers torchreid prints for these datasets.
MARKET1501_STATS: Stats = {
    "train": (751, 12936), "query": (750, 3368), "gallery": (751, 15913)}
DUKEMTMC_STATS: Stats = {
    "train": (702, 16522), "query": (702, 2228), "gallery": (1110, 17661)}
OCCLUDED_DUKE_STATS: Stats = {
    "train": (702, 15618), "query": (519, 2210), "gallery": (1110, 17661)}

# -------------------------------------------------------------- Market-1501 --

# The top-level folder inside the official Market-1501 zip archive.
MARKET1501_ARCHIVE_DIR = "Market-1501-v15.09.15"

# PPPP_cCsS_FFFFFF_NN.jpg, e.g. 0002_c1s1_000451_03.jpg; pid -1 marks junk.
MARKET1501_NAME = re.compile(
    r"^(?P<pid>-1|\d{4})_c(?P<cam>[1-9])s(?P<seq>\d)_(?P<frame>\d{6})"
    r"_(?P<box>\d{2})\.jpg$")
MARKET1501_FORMAT = "PPPP_cCsS_FFFFFF_NN.jpg (e.g. 0002_c1s1_000451_03.jpg)"

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


def parse_market1501(root: str, *, name: str = "market1501") -> ImageDataset:
  """Indexes a Market-1501 folder under the standard evaluation protocol.

  Junk images (pid -1) are dropped from every split; distractors (pid 0) are
  kept in the gallery only. Train pids are relabelled 0..P-1 in sorted order of
  the original pid (so every process derives the same labels); query and
  gallery keep the original pids. Camera ids become 0-based. A complete copy
  is checked against `MARKET1501_STATS`.

  Args:
    root: the folder holding bounding_box_train/, query/, bounding_box_test/,
      or its parent when those sit under Market-1501-v15.09.15/.
    name: dataset name recorded in the index.

  Returns:
    The `ImageDataset` index, with paths sorted within each split.

  Raises:
    DatasetNotFoundError: root or a split folder is missing.
    LayoutError: a split has no images or an image name does not parse.
    StatisticsError: a complete-looking copy has the wrong counts.
  """
  base = resolve_root(os.fspath(root), label="Market-1501",
                      archive_dirs=(MARKET1501_ARCHIVE_DIR,),
                      splits=MARKET_STYLE_SPLITS, help_text=MARKET1501_HELP)
  train_dir, query_dir, gallery_dir = (
      os.path.join(base, s) for s in MARKET_STYLE_SPLITS)

  def read(folder):
    return read_flat_split(folder, MARKET1501_NAME, label="Market-1501",
                           name_format=MARKET1501_FORMAT,
                           help_text=MARKET1501_HELP)

  paths, pids, camids = read(train_dir)
  train = image_split_where(paths, pids, camids, pids > DISTRACTOR_PID)
  if not len(train):
    raise LayoutError(
        f"Split folder {train_dir!r} holds only junk/distractor images "
        "(pid -1 or 0000); training needs real identities.")
  train = relabel_train(train)

  paths, pids, camids = read(query_dir)
  query = image_split_where(paths, pids, camids, pids > DISTRACTOR_PID)
  if not len(query):
    raise LayoutError(
        f"Split folder {query_dir!r} holds no query images with a real "
        "identity (only pid -1 or 0000).")

  paths, pids, camids = read(gallery_dir)
  gallery = image_split_where(paths, pids, camids, pids != JUNK_PID)

  dataset = ImageDataset(name=name, root=base, train=train, query=query,
                         gallery=gallery)
  check_statistics(dataset, MARKET1501_STATS)
  return dataset


# ---------------------------------------------------------------- DukeMTMC --

DUKEMTMC_ARCHIVE_DIR = "DukeMTMC-reID"
OCCLUDED_DUKE_ARCHIVE_DIR = "Occluded_Duke"

# PPPP_cC_fFFFFFFF.jpg, e.g. 0005_c2_f0046985.jpg; 8 cameras, no junk ids.
DUKE_NAME = re.compile(
    r"^(?P<pid>\d{4})_c(?P<cam>[1-8])_f(?P<frame>\d{7})\.jpg$")
DUKE_FORMAT = "PPPP_cC_fFFFFFFF.jpg (e.g. 0005_c2_f0046985.jpg)"


def _duke_help(label: str, archive_dir: str, origin: str) -> str:
  return f"""\
Expected layout (directly under the root, or under <root>/{archive_dir}/ as
unzipped from the archive):
  <root>/
    bounding_box_train/   training images
    query/                query images
    bounding_box_test/    gallery images
File names: {DUKE_FORMAT}
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


def _parse_duke_style(root: str, *, name: str, label: str, archive_dir: str,
                      help_text: str) -> ImageDataset:
  """Market-style folders without junk/distractor ids: every image kept."""
  base = resolve_root(os.fspath(root), label=label,
                      archive_dirs=(archive_dir,), splits=MARKET_STYLE_SPLITS,
                      help_text=help_text)
  train, query, gallery = (
      ImageSplit(*_as_tuple_paths(read_flat_split(
          os.path.join(base, s), DUKE_NAME, label=label,
          name_format=DUKE_FORMAT, help_text=help_text)))
      for s in MARKET_STYLE_SPLITS)
  return ImageDataset(name=name, root=base, train=relabel_train(train),
                      query=query, gallery=gallery)


def _as_tuple_paths(read):
  paths, pids, camids = read
  return tuple(paths), pids, camids


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
  ds = _parse_duke_style(root, name=name, label="DukeMTMC-reID",
                         archive_dir=DUKEMTMC_ARCHIVE_DIR,
                         help_text=DUKEMTMC_HELP)
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
  ds = _parse_duke_style(root, name=name, label="Occluded-DukeMTMC",
                         archive_dir=OCCLUDED_DUKE_ARCHIVE_DIR,
                         help_text=OCCLUDED_DUKE_HELP)
  check_statistics(ds, OCCLUDED_DUKE_STATS)
  return ds
