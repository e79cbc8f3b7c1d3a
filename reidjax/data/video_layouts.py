"""Parsers that turn a video ReID dataset folder into a `VideoDataset` index.

MARS (Zheng et al., ECCV 2016), DukeMTMC-VideoReID (Wu et al., CVPR 2018),
iLIDS-VID (Wang et al., ECCV 2014) and PRID-2011 (Hirzer et al., SCIA 2011,
multi-shot sequences as used by Wang et al.). A tracklet is the ordered frame
paths of one person in one camera; every split is a list of tracklets with
pids and 0-based camids, train pids relabelled 0..P-1 in sorted order of the
dataset's ids, query and gallery keeping the dataset's ids. Plain
Python/NumPy (+ scipy.io for the .mat files), no TensorFlow; the helpers and
statistics check are `reidjax.data.layout_common`'s, shared with the image
parsers.
"""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
import scipy.io

from reidjax.data.index import VideoDataset, VideoSplit
from reidjax.data.layout_common import (DISTRACTOR_PID, JUNK_PID,
                                        DatasetNotFoundError, LayoutError,
                                        Stats, check_statistics,
                                        contiguous_labels, resolve_root)

_log = logging.getLogger(__name__)

# Official (ids, tracklets) per split, counted as `check_statistics` does:
# distinct pids of the parsed split (MARS gallery: distractor pid 0 included)
# and tracklets after junk (pid -1) is dropped. These are the numbers
# torchreid prints; some MARS query ids have no gallery tracklet, hence 626
# query ids against 622 gallery ids.
MARS_STATS: Stats = {
    "train": (625, 8298), "query": (626, 1980), "gallery": (622, 9330)}
DUKEMTMC_VIDEO_STATS: Stats = {
    "train": (702, 2196), "query": (702, 702), "gallery": (1110, 2636)}
ILIDSVID_STATS: Stats = {
    "train": (150, 300), "query": (150, 150), "gallery": (150, 150)}
PRID2011_STATS: Stats = {
    "train": (89, 178), "query": (89, 89), "gallery": (89, 89)}


def _relabelled(split: VideoSplit) -> VideoSplit:
  return VideoSplit(split.tracklets, contiguous_labels(split.pids),
                    split.camids)


def _video_split(tracklets, pids, camids) -> VideoSplit:
  return VideoSplit(tuple(tracklets), np.asarray(pids, np.int32).reshape(-1),
                    np.asarray(camids, np.int32).reshape(-1))


def _subset(split: VideoSplit, keep: np.ndarray) -> VideoSplit:
  idx = np.flatnonzero(keep)
  return VideoSplit(tuple(split.tracklets[i] for i in idx), split.pids[idx],
                    split.camids[idx])


def _load_mat_variable(path: str, variable: str) -> np.ndarray:
  """One variable of a MATLAB v5 .mat file, as a NumPy array."""
  try:
    mat = scipy.io.loadmat(path, variable_names=[variable])
  # Any failure to read a user's file is a bad file (a truncated one raises
  # IndexError deep inside scipy), not a traceback.
  except Exception as e:  # pylint: disable=broad-except
    raise LayoutError(
        f"Cannot read {path!r} as a MATLAB .mat file ({e}); replace it with "
        "the original file of the dataset.") from e
  if variable not in mat:
    raise LayoutError(
        f"{path!r} has no variable {variable!r}; replace it with the original "
        "file of the dataset.")
  return np.asarray(mat[variable])


def _as_int(values: np.ndarray, path: str, variable: str) -> np.ndarray:
  as_int = np.rint(values).astype(np.int64)
  if not np.array_equal(as_int, values):
    raise LayoutError(f"{path!r}: {variable} holds non-integer values.")
  return as_int


# -------------------------------------------------------------------- MARS --

MARS_ARCHIVE_DIRS = ("MARS", "mars")
MARS_SPLITS = ("bbox_train", "bbox_test", "info")
MARS_INFO_FILES = ("train_name.txt", "test_name.txt", "tracks_train_info.mat",
                   "tracks_test_info.mat", "query_IDX.mat")
MARS_NUM_CAMS = 6

# PPPPCcTttttFfff.jpg, e.g. 0001C1T0001F001.jpg; PPPP is 0000 for distractor
# and 00-1 for junk tracklets; the pid folder is the first four characters.
_MARS_NAME = re.compile(
    r"^(?P<pid>\d{4}|00-1)C(?P<cam>[1-6])T(?P<tracklet>\d{4})"
    r"F(?P<frame>\d{3,})\.jpg$")
_MARS_FORMAT = "PPPPCcTttttFfff.jpg (e.g. 0001C1T0001F001.jpg)"

MARS_HELP = f"""\
Expected layout (directly under the root, or under <root>/MARS/ or
<root>/mars/):
  <root>/
    bbox_train/<pid>/{_MARS_FORMAT.split(' ')[0]}   training frames
    bbox_test/<pid>/...                     test frames (pid folders 0000 =
                                            distractors, 00-1 = junk)
    info/train_name.txt  info/test_name.txt   one frame file name per line
    info/tracks_train_info.mat   track_train_info: rows [start end pid cam],
    info/tracks_test_info.mat    track_test_info   1-based inclusive line
                                                   ranges of the name list
    info/query_IDX.mat           query_IDX: 1-based rows of track_test_info
Frame names: {_MARS_FORMAT}: person id, camera 1..6, tracklet, frame.
To get the data: bbox_train.zip and bbox_test.zip from the MARS project page
(Zheng et al., ECCV 2016, zheng-lab / liangzheng.com.cn "MARS"), and info/
from github.com/liangzheng06/MARS-evaluation; unzip all into one folder and
point --config.data.root at it. To try the pipeline without it, write the
synthetic MARS-layout set with reidjax.data.synthetic_video."""


def _read_mars_names(path: str) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Reads a MARS name list: names, raw pids (-1 = junk), 1-based cameras."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except UnicodeDecodeError as e:
    raise LayoutError(
        f"Name list {path!r} is not a text file of frame names ({e}). Replace "
        "it with the original from github.com/liangzheng06/MARS-evaluation."
    ) from e
  while lines and not lines[-1].strip():
    lines.pop()
  if not lines:
    raise LayoutError(f"Name list {path!r} is empty.\n{MARS_HELP}")
  pids = np.empty(len(lines), np.int32)
  cams = np.empty(len(lines), np.int32)
  for i, line in enumerate(lines):
    m = _MARS_NAME.match(line)
    if m is None:
      raise LayoutError(
          f"{path}:{i + 1}: {line!r} does not match the MARS frame name "
          f"pattern {_MARS_FORMAT}. Replace {os.path.basename(path)} with "
          "the original from github.com/liangzheng06/MARS-evaluation.")
    pids[i] = JUNK_PID if m["pid"] == "00-1" else int(m["pid"])
    cams[i] = int(m["cam"])
  return lines, pids, cams


def _read_mars_tracks(info_path: str, variable: str) -> np.ndarray:
  """(T, 4) int64 rows [start, end, pid, camera] of a tracks_*_info.mat."""
  info = _load_mat_variable(info_path, variable)
  if info.ndim != 2 or info.shape[1] != 4 or not info.shape[0]:
    raise LayoutError(
        f"{info_path!r}: {variable} has shape {info.shape}; expected (T, 4) "
        "rows [start, end, pid, camera].")
  return _as_int(info, info_path, variable)


def _mars_tracklets(names: list[str], name_pids: np.ndarray,
                    name_cams: np.ndarray, tracks: np.ndarray, *,
                    frame_dir: str, names_path: str, info_path: str,
                    ) -> VideoSplit:
  """Every row of `tracks` as a tracklet (raw pids, 0-based camids)."""
  tracklets = []
  for row, (start, end, pid, cam) in enumerate(tracks):
    where = f"{info_path}: row {row + 1} [{start} {end} {pid} {cam}]"
    if not 1 <= start <= end <= len(names):
      raise LayoutError(
          f"{where}: frame range {start}..{end} is outside the "
          f"{len(names)} lines of {names_path!r}.")
    if not 1 <= cam <= MARS_NUM_CAMS:
      raise LayoutError(f"{where}: camera {cam} is not 1..{MARS_NUM_CAMS}.")
    seg = slice(start - 1, end)
    wrong = np.flatnonzero((name_pids[seg] != pid) | (name_cams[seg] != cam))
    if wrong.size:
      line = start + int(wrong[0])
      raise LayoutError(
          f"{where}: line {line} of {names_path!r} is {names[line - 1]!r}, "
          f"not a frame of person {pid} in camera {cam}. The name list and "
          "the track info do not belong together.")
    frames = tuple(os.path.join(frame_dir, n[:4], n) for n in names[seg])
    # Check the ends only: stat-ing all ~1.2M frames would take minutes.
    for path in (frames[0], frames[-1]):
      if not os.path.isfile(path):
        raise DatasetNotFoundError(
            f"{where}: frame {path!r} does not exist. Unzip "
            f"{os.path.basename(frame_dir)}.zip completely.\n{MARS_HELP}")
    tracklets.append(frames)
  return _video_split(tracklets, tracks[:, 2], tracks[:, 3] - 1)


def parse_mars(root: str, *, name: str = "mars") -> VideoDataset:
  """Indexes a MARS folder under its standard protocol.

  Folder tree (directly under `root`, or under `root`/MARS/ or `root`/mars/)::

    MARS/
      bbox_train/0001/0001C1T0001F001.jpg ...   (625 ids, 8,298 tracklets)
      bbox_test/0000/ 00-1/ 0002/ ...
      info/train_name.txt  test_name.txt          frame names, one per line
      info/tracks_train_info.mat  (track_train_info)
      info/tracks_test_info.mat   (track_test_info)
      info/query_IDX.mat          (query_IDX)

  bbox_train/bbox_test come from the MARS project page (Zheng et al., ECCV
  2016), info/ from github.com/liangzheng06/MARS-evaluation. A tracklet is
  one row [start, end, pid, camera] of a track info array: lines start..end
  (1-based, inclusive) of the split's name list, in list order, read from
  bbox_<split>/<first 4 characters of the name>/<name>. Query = the rows of
  track_test_info listed in query_IDX (in that order); gallery = every other
  test row (in row order).

  Protocol (torchreid's, which gives the official counts): junk tracklets
  (pid -1, folder 00-1) are dropped from every split; distractors (pid 0) stay
  in the gallery only (train and query keep real identities; MARS has none
  there). Each drop is logged. Some query ids have no gallery tracklet (626
  query ids vs 622 gallery ids, distractor 0 included); the evaluator skips
  such queries. Camera ids become 0-based (0..5); train pids are relabelled
  0..P-1 in sorted order. Every row's frames are checked to belong to its
  person and camera; only the first and last frame of each tracklet are
  checked to exist. A complete copy is checked against `MARS_STATS`.

  Raises:
    DatasetNotFoundError: root, a folder, an info file or a frame is missing.
    LayoutError: a name, a .mat variable or a row does not fit the layout.
    StatisticsError: a complete-looking copy has the wrong counts.
  """
  base = resolve_root(os.fspath(root), label="MARS",
                      archive_dirs=MARS_ARCHIVE_DIRS, splits=MARS_SPLITS,
                      help_text=MARS_HELP)
  info = {f: os.path.join(base, "info", f) for f in MARS_INFO_FILES}
  missing = [f for f, p in info.items() if not os.path.isfile(p)]
  if missing:
    raise DatasetNotFoundError(
        f"MARS root {root!r} is missing info file(s) "
        f"{', '.join(repr('info/' + m) for m in missing)} (looked in "
        f"{os.path.join(base, 'info')!r}).\n{MARS_HELP}")

  def read(split, names_file, info_file, variable):
    names, pids, cams = _read_mars_names(info[names_file])
    return _mars_tracklets(
        names, pids, cams, _read_mars_tracks(info[info_file], variable),
        frame_dir=os.path.join(base, split), names_path=info[names_file],
        info_path=info[info_file])

  train_all = read("bbox_train", "train_name.txt", "tracks_train_info.mat",
                   "track_train_info")
  test_all = read("bbox_test", "test_name.txt", "tracks_test_info.mat",
                  "track_test_info")

  query_path = info["query_IDX.mat"]
  query_rows = _as_int(
      _load_mat_variable(query_path, "query_IDX").reshape(-1), query_path,
      "query_IDX") - 1
  if not query_rows.size:
    raise LayoutError(f"{query_path!r}: query_IDX is empty.")
  bad = query_rows[(query_rows < 0) | (query_rows >= len(test_all))]
  if bad.size:
    raise LayoutError(
        f"{query_path!r}: query_IDX holds row {bad[0] + 1}, outside the "
        f"{len(test_all)} rows of track_test_info.")
  if np.unique(query_rows).size != query_rows.size:
    raise LayoutError(f"{query_path!r}: query_IDX lists a row more than once.")
  is_query = np.zeros(len(test_all), bool)
  is_query[query_rows] = True
  query = VideoSplit(tuple(test_all.tracklets[i] for i in query_rows),
                     test_all.pids[query_rows], test_all.camids[query_rows])
  gallery = _subset(test_all, ~is_query)

  def keep(split, label, mask, what):
    dropped = int((~mask).sum())
    if dropped:
      _log.info("MARS %s: dropped %d %s tracklet(s).", label, dropped, what)
    return _subset(split, mask)

  train = keep(train_all, "train", train_all.pids > DISTRACTOR_PID,
               "junk/distractor (pid -1/0)")
  if not len(train):
    raise LayoutError(
        f"{info['tracks_train_info.mat']!r} holds no tracklet with a real "
        "identity (only pid -1 or 0); training needs real identities.")
  query = keep(query, "query", query.pids > DISTRACTOR_PID,
               "junk/distractor (pid -1/0)")
  if not len(query):
    raise LayoutError(
        f"{query_path!r} selects no tracklet with a real identity.")
  gallery = keep(gallery, "gallery", gallery.pids != JUNK_PID, "junk (pid -1)")

  ds = VideoDataset(name=name, root=base, train=_relabelled(train),
                    query=query, gallery=gallery)
  check_statistics(ds, MARS_STATS)
  return ds


# ------------------------------------------------------ DukeMTMC-VideoReID --

DUKEMTMC_VIDEO_ARCHIVE_DIRS = (
    "DukeMTMC-VideoReID",
    os.path.join("dukemtmc-vidreid", "DukeMTMC-VideoReID"))
DUKEMTMC_VIDEO_SPLITS = ("train", "query", "gallery")

# PPPP_Cc_Fffff_Xxxxxx.jpg, e.g. 0001_C6_F0099_X30823.jpg (release names), or
# the older 0001C6F0099X30823.jpg: person, camera 1..8, frame within the
# tracklet, frame within the camera's video.
_DUKE_VIDEO_NAME = re.compile(
    r"^(?P<pid>\d{4})_?C(?P<cam>[1-8])_?F(?P<frame>\d{4,})_?X(?P<x>\d+)\.jpg$")
_DUKE_VIDEO_FORMAT = ("PPPP_Cc_Fffff_Xxxxxx.jpg (e.g. "
                      "0001_C6_F0099_X30823.jpg; also 0001C6F0099X30823.jpg)")
_FOUR_DIGITS = re.compile(r"^\d{4}$")

DUKEMTMC_VIDEO_HELP = f"""\
Expected layout (directly under the root, or under <root>/DukeMTMC-VideoReID/
as unzipped from DukeMTMC-VideoReID.zip):
  <root>/
    train/<pid:04d>/<tracklet:04d>/*.jpg    (702 ids, 2,196 tracklets)
    query/<pid>/<tracklet>/*.jpg            (one tracklet per test id)
    gallery/<pid>/<tracklet>/*.jpg          (702 test ids + 408 distractor ids)
Frame names: {_DUKE_VIDEO_FORMAT}; frames are ordered by F.
DukeMTMC-VideoReID: released with Wu et al., CVPR 2018
(github.com/Yu-Wu/DukeMTMC-VideoReID); the source DukeMTMC data has been
withdrawn, so use a copy obtained under its original terms. Point
--config.data.root at the unzipped folder."""


def _read_duke_video_split(folder: str) -> VideoSplit:
  """Every <pid>/<tracklet>/ folder of a split (raw pids, 0-based camids)."""
  tracklets, pids, camids = [], [], []
  for pid_name in sorted(os.listdir(folder)):
    pid_dir = os.path.join(folder, pid_name)
    if pid_name.startswith(".") or not os.path.isdir(pid_dir):
      continue
    if not _FOUR_DIGITS.match(pid_name):
      raise LayoutError(
          f"Folder {pid_dir!r} is not a 4-digit person id.\n"
          f"{DUKEMTMC_VIDEO_HELP}")
    for t_name in sorted(os.listdir(pid_dir)):
      t_dir = os.path.join(pid_dir, t_name)
      if t_name.startswith(".") or not os.path.isdir(t_dir):
        continue
      if not _FOUR_DIGITS.match(t_name):
        raise LayoutError(
            f"Folder {t_dir!r} is not a 4-digit tracklet id.\n"
            f"{DUKEMTMC_VIDEO_HELP}")
      frames = {}
      cams = set()
      for f in os.listdir(t_dir):
        if f.startswith(".") or not f.lower().endswith(".jpg"):
          continue
        m = _DUKE_VIDEO_NAME.match(f)
        if m is None:
          raise LayoutError(
              f"Frame file name {f!r} in {t_dir!r} does not match the "
              f"DukeMTMC-VideoReID pattern {_DUKE_VIDEO_FORMAT}.")
        if m["pid"] != pid_name:
          raise LayoutError(
              f"Frame {f!r} names person {m['pid']} but lies in the folder of "
              f"person {pid_name} ({t_dir!r}).")
        frame = int(m["frame"])
        if frame in frames:
          raise LayoutError(
              f"Frames {frames[frame]!r} and {f!r} in {t_dir!r} have the same "
              f"frame number F{m['frame']}.")
        frames[frame] = f
        cams.add(int(m["cam"]))
      if not frames:
        raise LayoutError(f"Tracklet folder {t_dir!r} has no .jpg frames.")
      if len(cams) > 1:
        raise LayoutError(
            f"Tracklet folder {t_dir!r} mixes cameras {sorted(cams)}; a "
            "tracklet is seen by one camera.")
      tracklets.append(tuple(os.path.join(t_dir, frames[k])
                             for k in sorted(frames)))
      pids.append(int(pid_name))
      camids.append(cams.pop() - 1)
  if not tracklets:
    raise LayoutError(
        f"Split folder {folder!r} holds no tracklets.\n{DUKEMTMC_VIDEO_HELP}")
  return _video_split(tracklets, pids, camids)


def parse_dukemtmc_video(root: str, *,
                         name: str = "dukemtmc_video") -> VideoDataset:
  """Indexes a DukeMTMC-VideoReID folder.

  Folder tree (directly under `root`, or under `root`/DukeMTMC-VideoReID/)::

    DukeMTMC-VideoReID/
      train/0001/0003/0001_C6_F0001_X30823.jpg ...  (702 ids, 2,196 tracklets)
      query/<pid>/<tracklet>/...                    (702 ids, 702 tracklets)
      gallery/<pid>/<tracklet>/...                  (1,110 ids, 2,636 tracklets)

  Released with Wu et al. (CVPR 2018, github.com/Yu-Wu/DukeMTMC-VideoReID).
  Each <pid>/<tracklet>/ folder is one tracklet, its frames ordered by the
  F number of their names (some tracklets start at F0002: every frame is
  kept, none is skipped). The camera comes from the names (1..8, stored
  0-based) and must be the same for all frames of a tracklet. There are no
  junk or distractor pids: the 408 gallery-only ids are ordinary ids. Train
  pids are relabelled 0..P-1 in sorted order; tracklets are sorted by (pid,
  tracklet folder). A complete copy is checked against `DUKEMTMC_VIDEO_STATS`.

  Raises:
    DatasetNotFoundError: root or a split folder is missing.
    LayoutError: a folder or frame name does not fit the layout.
    StatisticsError: a complete-looking copy has the wrong counts.
  """
  base = resolve_root(os.fspath(root), label="DukeMTMC-VideoReID",
                      archive_dirs=DUKEMTMC_VIDEO_ARCHIVE_DIRS,
                      splits=DUKEMTMC_VIDEO_SPLITS,
                      help_text=DUKEMTMC_VIDEO_HELP)
  train, query, gallery = (_read_duke_video_split(os.path.join(base, s))
                           for s in DUKEMTMC_VIDEO_SPLITS)
  ds = VideoDataset(name=name, root=base, train=_relabelled(train),
                    query=query, gallery=gallery)
  check_statistics(ds, DUKEMTMC_VIDEO_STATS)
  return ds


# ----------------------------------------------- image-sequence datasets --

# The frame number is the last run of digits before the extension, e.g.
# cam1_person001_00317.png (iLIDS-VID) or 0001.png (PRID-2011).
_FRAME_NUMBER = re.compile(r"(\d+)\.png$", re.IGNORECASE)


def _sequence_frames(folder: str, *, help_text: str) -> tuple[str, ...]:
  """The .png frames of one sequence folder, in frame-number order."""
  frames = {}
  for f in os.listdir(folder):
    if f.startswith(".") or not f.lower().endswith(".png"):
      continue
    m = _FRAME_NUMBER.search(f)
    if m is None:
      raise LayoutError(
          f"Frame file name {f!r} in {folder!r} does not end in a frame "
          "number (e.g. 0001.png).")
    number = int(m[1])
    if number in frames:
      raise LayoutError(
          f"Frames {frames[number]!r} and {f!r} in {folder!r} have the same "
          "frame number.")
    frames[number] = f
  if not frames:
    raise LayoutError(
        f"Sequence folder {folder!r} has no .png frames.\n{help_text}")
  return tuple(os.path.join(folder, frames[k]) for k in sorted(frames))


def _person_folders(cam_dir: str, pattern: re.Pattern, *, example: str,
                    help_text: str) -> dict[int, str]:
  """person id -> folder, for every person folder of one camera."""
  people = {}
  for entry in sorted(os.listdir(cam_dir)):
    path = os.path.join(cam_dir, entry)
    if entry.startswith(".") or not os.path.isdir(path):
      continue
    m = pattern.match(entry)
    if m is None:
      raise LayoutError(
          f"Folder {path!r} is not a person folder like {example!r}.\n"
          f"{help_text}")
    people[int(m["pid"])] = path
  if not people:
    raise LayoutError(
        f"Camera folder {cam_dir!r} holds no person folders.\n{help_text}")
  return people


def _two_camera_splits(train_ids, test_ids, folders_a, folders_b, *,
                       help_text: str) -> tuple[VideoSplit, ...]:
  """Train (both cameras, relabelled), query (camera 0), gallery (camera 1).

  Args:
    train_ids, test_ids: person ids; each split is sorted by id.
    folders_a, folders_b: person id -> sequence folder of camera 0 / 1.
  """
  def tracklets(ids, cams):
    out, pids, camids = [], [], []
    for pid in sorted(ids):
      for cam in cams:
        folder = (folders_a, folders_b)[cam][pid]
        out.append(_sequence_frames(folder, help_text=help_text))
        pids.append(pid)
        camids.append(cam)
    return _video_split(out, pids, camids)

  return (_relabelled(tracklets(train_ids, (0, 1))),
          tracklets(test_ids, (0,)), tracklets(test_ids, (1,)))


# --------------------------------------------------------------- iLIDS-VID --

ILIDSVID_ARCHIVE_DIRS = ("ilids-vid", "iLIDS-VID")
ILIDSVID_CAMS = (os.path.join("i-LIDS-VID", "sequences", "cam1"),
                 os.path.join("i-LIDS-VID", "sequences", "cam2"))
ILIDSVID_SPLIT_MAT = os.path.join("train-test people splits",
                                  "train_test_splits_ilidsvid.mat")
_ILIDS_PERSON = re.compile(r"^person(?P<pid>\d{3})$")

ILIDSVID_HELP = """\
Expected layout (directly under the root, or under <root>/ilids-vid/):
  <root>/
    i-LIDS-VID/sequences/cam1/person001/cam1_person001_00317.png ...
    i-LIDS-VID/sequences/cam2/person001/...
    train-test people splits/train_test_splits_ilidsvid.mat
  The .mat holds ls_set: (10 splits, 300) 1-based indices into the sorted
  person folders; the first half of each row is the test set, the rest train.
iLIDS-VID: iLIDS-VID.tar from the page of Wang et al., ECCV 2014 (QMUL,
"iLIDS-VID"); untar it and point --config.data.root at the folder holding
i-LIDS-VID/ and 'train-test people splits/'."""


def parse_ilidsvid(root: str, *, name: str = "ilidsvid",
                   split_index: int = 0) -> VideoDataset:
  """Indexes iLIDS-VID with one of its 10 official train/test splits.

  Folder tree (directly under `root`, or under `root`/ilids-vid/)::

    i-LIDS-VID/sequences/cam1/person001/*.png   (300 persons, both cameras)
    i-LIDS-VID/sequences/cam2/person001/*.png
    train-test people splits/train_test_splits_ilidsvid.mat   (ls_set)

  From iLIDS-VID.tar (Wang et al., ECCV 2014). Row `split_index` of `ls_set`
  lists 1-based indices into the person folders in sorted order; following
  Wang et al. (and torchreid), its first half is the test set and the second
  half the training set (150 / 150). Each person has one sequence per
  camera; frames are ordered by the number at the end of their names.

  Train = both cameras' sequences of the train persons (pids relabelled
  0..P-1 in sorted order of the person number); query = camera-1 sequences
  of the test persons, gallery = their camera-2 sequences, with pids = the
  person number of the folder (person001 -> 1) and camids 0 (cam1) / 1
  (cam2). A complete copy is checked against `ILIDSVID_STATS`.

  Args:
    root: the iLIDS-VID folder.
    name: dataset name recorded in the index.
    split_index: row of ls_set, 0..9.

  Raises:
    ValueError: split_index out of range.
    DatasetNotFoundError: root, a camera folder or the split file is missing.
    LayoutError: person folders differ between cameras, a name or ls_set
      does not fit the layout.
    StatisticsError: a complete-looking copy has the wrong counts.
  """
  base = resolve_root(os.fspath(root), label="iLIDS-VID",
                      archive_dirs=ILIDSVID_ARCHIVE_DIRS,
                      splits=ILIDSVID_CAMS, help_text=ILIDSVID_HELP)
  split_path = os.path.join(base, ILIDSVID_SPLIT_MAT)
  if not os.path.isfile(split_path):
    raise DatasetNotFoundError(
        f"iLIDS-VID root {root!r} has no split file {ILIDSVID_SPLIT_MAT!r} "
        f"(looked in {base!r}).\n{ILIDSVID_HELP}")
  cam1, cam2 = (
      _person_folders(os.path.join(base, c), _ILIDS_PERSON, example="person001",
                      help_text=ILIDSVID_HELP) for c in ILIDSVID_CAMS)
  only = sorted(set(cam1) ^ set(cam2))
  if only:
    raise LayoutError(
        f"iLIDS-VID at {base!r}: person {only[0]:03d} has a sequence in only "
        "one camera; every person must appear in cam1 and cam2.")
  persons = np.asarray(sorted(cam1))

  ls_set = _as_int(_load_mat_variable(split_path, "ls_set"), split_path,
                   "ls_set")
  if ls_set.ndim != 2 or ls_set.shape[1] != persons.size:
    raise LayoutError(
        f"{split_path!r}: ls_set has shape {ls_set.shape}, expected (splits, "
        f"{persons.size}) for the {persons.size} person folders found.")
  if not 0 <= split_index < ls_set.shape[0]:
    raise ValueError(
        f"iLIDS-VID split_index {split_index} is out of range: {split_path!r} "
        f"holds splits 0..{ls_set.shape[0] - 1}.")
  row = ls_set[split_index]
  if not np.array_equal(np.sort(row), np.arange(1, persons.size + 1)):
    raise LayoutError(
        f"{split_path!r}: ls_set row {split_index + 1} is not a permutation "
        f"of 1..{persons.size}.")
  half = persons.size // 2
  test_ids, train_ids = persons[row[:half] - 1], persons[row[half:] - 1]

  train, query, gallery = _two_camera_splits(
      train_ids, test_ids, cam1, cam2, help_text=ILIDSVID_HELP)
  ds = VideoDataset(name=name, root=base, train=train, query=query,
                    gallery=gallery)
  check_statistics(ds, ILIDSVID_STATS)
  return ds


# --------------------------------------------------------------- PRID-2011 --

PRID2011_ARCHIVE_DIRS = ("prid2011",)
PRID2011_CAMS = (os.path.join("prid_2011", "multi_shot", "cam_a"),
                 os.path.join("prid_2011", "multi_shot", "cam_b"))
PRID2011_SPLIT_FILE = "splits_prid2011.json"
# Persons 0001..0200 are the same people in both cameras; higher numbers are
# different, single-camera people in each camera.
PRID2011_SHARED_PERSONS = 200
# The protocol of Wang et al. (ECCV 2014) keeps the shared persons whose
# sequences have at least this many frames in both cameras: 178 persons.
PRID2011_MIN_FRAMES = 21
PRID2011_NUM_SPLITS = 10
_PRID_PERSON = re.compile(r"^person_(?P<pid>\d{4})$")

PRID2011_HELP = f"""\
Expected layout (directly under the root, or under <root>/prid2011/):
  <root>/
    prid_2011/multi_shot/cam_a/person_0001/0001.png ...
    prid_2011/multi_shot/cam_b/person_0001/...
    {PRID2011_SPLIT_FILE}   (optional) the 10 train/test splits
  Persons 0001..0200 appear in both cameras; those with at least
  {PRID2011_MIN_FRAMES} frames in each camera (178) are used, split 50/50.
  {PRID2011_SPLIT_FILE}: a JSON list of {{"train": [...], "test": [...]}}
  objects, each naming person folders ("person_0001"); without it, 10 seeded
  random splits are generated.
PRID-2011: prid_2011.zip from the PRID 2011 page of TU Graz (Hirzer et al.,
SCIA 2011); unzip it and point --config.data.root at the folder holding
prid_2011/."""


def prid2011_split(person_ids, *, split_index: int, seed: int = 0,
                   ) -> tuple[np.ndarray, np.ndarray]:
  """One of `PRID2011_NUM_SPLITS` seeded 50/50 splits of `person_ids`.

  The split depends only on (sorted ids, seed, split_index): a permutation
  drawn from ``np.random.default_rng([seed, split_index])``; its first
  ``n // 2`` persons train, the rest test.

  Returns:
    (train ids, test ids), each sorted.
  """
  if not 0 <= split_index < PRID2011_NUM_SPLITS:
    raise ValueError(
        f"PRID-2011 split_index {split_index} is out of range "
        f"0..{PRID2011_NUM_SPLITS - 1}.")
  ids = np.sort(np.asarray(person_ids, np.int64))
  order = np.random.default_rng([seed, split_index]).permutation(ids.size)
  half = ids.size // 2
  return np.sort(ids[order[:half]]), np.sort(ids[order[half:]])


def _read_prid_split_file(path: str, split_index: int, shared: set[int],
                          ) -> tuple[list[int], list[int]]:
  try:
    with open(path) as f:
      splits = json.load(f)
  except (OSError, ValueError) as e:
    raise LayoutError(f"Cannot read {path!r} as JSON ({e}).") from e
  if not isinstance(splits, list) or not splits:
    raise LayoutError(
        f"{path!r} must hold a non-empty JSON list of "
        '{"train": [...], "test": [...]} objects.')
  if not 0 <= split_index < len(splits):
    raise ValueError(
        f"PRID-2011 split_index {split_index} is out of range: {path!r} holds "
        f"splits 0..{len(splits) - 1}.")
  split = splits[split_index]
  if not isinstance(split, dict) or not {"train", "test"} <= set(split):
    raise LayoutError(
        f"{path!r}: split {split_index} is not an object with 'train' and "
        "'test' lists.")
  out = []
  for key in ("train", "test"):
    ids = []
    for folder in split[key]:
      m = _PRID_PERSON.match(str(folder))
      if m is None or int(m["pid"]) not in shared:
        raise LayoutError(
            f"{path!r}: split {split_index} {key} names {folder!r}, which is "
            f"not a person folder (person_NNNN) present in both cameras with "
            f"a number up to {PRID2011_SHARED_PERSONS}.")
      ids.append(int(m["pid"]))
    out.append(ids)
  both = set(out[0]) & set(out[1])
  if both:
    raise LayoutError(
        f"{path!r}: split {split_index} puts person_{min(both):04d} in both "
        "train and test.")
  return out[0], out[1]


def parse_prid2011(root: str, *, name: str = "prid2011", split_index: int = 0,
                   seed: int = 0,
                   min_frames: int = PRID2011_MIN_FRAMES) -> VideoDataset:
  """Indexes PRID-2011 (multi-shot sequences) with one of 10 splits.

  Folder tree (directly under `root`, or under `root`/prid2011/)::

    prid_2011/multi_shot/cam_a/person_0001/0001.png ...   (385 persons)
    prid_2011/multi_shot/cam_b/person_0001/0001.png ...   (749 persons)
    splits_prid2011.json                                   (optional)

  From prid_2011.zip (Hirzer et al., SCIA 2011). Persons 0001..0200 appear
  in both cameras (higher numbers are single-camera people and are not
  used); following Wang et al. (ECCV 2014), those with at least `min_frames`
  frames in each camera are kept (178 persons) and split 50/50 into train
  and test.

  The split: if `root` holds splits_prid2011.json (the file torchreid
  distributes: a JSON list of ``{"train": [...], "test": [...]}`` objects
  naming person folders such as "person_0001"), its entry `split_index` is
  used as it is (`seed` and `min_frames` are then unused). Otherwise split
  `split_index` (0..9) is generated by `prid2011_split` from `seed`, the same
  on every host.

  Train = both cameras' sequences of the train persons (pids relabelled
  0..P-1 in sorted person order); query = cam_a sequences of the test persons,
  gallery = their cam_b sequences, pids = person numbers, camids 0 (cam_a) /
  1 (cam_b). Frames are ordered by the number in their names. A complete copy
  is checked against `PRID2011_STATS`.

  Raises:
    ValueError: split_index out of range.
    DatasetNotFoundError: root or a camera folder is missing.
    LayoutError: a shared person lacks a camera, or a name / the split file
      does not fit the layout.
    StatisticsError: a complete-looking copy has the wrong counts.
  """
  base = resolve_root(os.fspath(root), label="PRID-2011",
                      archive_dirs=PRID2011_ARCHIVE_DIRS,
                      splits=PRID2011_CAMS, help_text=PRID2011_HELP)
  cam_a, cam_b = (
      _person_folders(os.path.join(base, c), _PRID_PERSON,
                      example="person_0001", help_text=PRID2011_HELP)
      for c in PRID2011_CAMS)
  shared_a = {p for p in cam_a if p <= PRID2011_SHARED_PERSONS}
  shared_b = {p for p in cam_b if p <= PRID2011_SHARED_PERSONS}
  only = sorted(shared_a ^ shared_b)
  if only:
    raise LayoutError(
        f"PRID-2011 at {base!r}: person_{only[0]:04d} appears in only one "
        f"camera, but persons 0001..{PRID2011_SHARED_PERSONS:04d} are in both "
        "(cam_a and cam_b). The copy is incomplete.")
  shared = shared_a

  split_file = os.path.join(base, PRID2011_SPLIT_FILE)
  if os.path.isfile(split_file):
    train_ids, test_ids = _read_prid_split_file(split_file, split_index,
                                                shared)
  else:
    def length(folder):
      return len(_sequence_frames(folder, help_text=PRID2011_HELP))

    eligible = sorted(p for p in shared
                      if min(length(cam_a[p]), length(cam_b[p])) >= min_frames)
    _log.info("PRID-2011: %d of %d shared persons have at least %d frames in "
              "both cameras; generating split %d (seed %d).", len(eligible),
              len(shared), min_frames, split_index, seed)
    if len(eligible) < 2:
      raise LayoutError(
          f"PRID-2011 at {base!r}: only {len(eligible)} shared person(s) have "
          f"at least {min_frames} frames in both cameras; a split needs 2.")
    train_ids, test_ids = prid2011_split(eligible, split_index=split_index,
                                         seed=seed)

  train, query, gallery = _two_camera_splits(
      train_ids, test_ids, cam_a, cam_b, help_text=PRID2011_HELP)
  ds = VideoDataset(name=name, root=base, train=train, query=query,
                    gallery=gallery)
  check_statistics(ds, PRID2011_STATS)
  return ds
