"""Tests for the video layout parsers on miniature copies of each dataset."""

import json
import os

import numpy as np
import pytest
import scipy.io

from reidjax.data import index
from reidjax.data import layout_common
from reidjax.data import layouts
from reidjax.data import video_layouts as vl


def _touch(path):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b"\xff\xd8")


def _base_names(tracklet):
  return [os.path.basename(p) for p in tracklet]


# -------------------------------------------------------------------- MARS --

# (pid, camera 1-based, tracklet number, frames) per row of the track info.
_MARS_TRAIN = [(3, 1, 1, 3), (3, 2, 1, 2), (1, 4, 1, 4), (-1, 1, 1, 2),
               (7, 6, 2, 2)]
_MARS_TEST = [
    (2, 1, 1, 3),  # row 1: query
    (2, 3, 1, 2),  # row 2
    (5, 2, 1, 2),  # row 3: query
    (5, 5, 1, 3),  # row 4
    (5, 5, 2, 2),  # row 5
    (0, 4, 1, 2),  # row 6: distractor, gallery only
    (-1, 6, 1, 2),  # row 7: junk, dropped
    (9, 1, 1, 2),  # row 8: query without a gallery match (as in MARS)
]
_MARS_QUERY = [3, 1, 8]  # 1-based rows of track_test_info, in this order


def _mars_folder(pid):
  return "00-1" if pid == -1 else f"{pid:04d}"


def _mars_names(pid, cam, tracklet, frames):
  return [f"{_mars_folder(pid)}C{cam}T{tracklet:04d}F{f:03d}.jpg"
          for f in range(1, frames + 1)]


def _write_mars_split(base, split, tracks):
  """Frames, name list and [start end pid cam] rows of one split."""
  names, rows = [], []
  for pid, cam, tracklet, frames in tracks:
    new = _mars_names(pid, cam, tracklet, frames)
    rows.append([len(names) + 1, len(names) + len(new), pid, cam])
    names += new
    for n in new:
      _touch(base / split / n[:4] / n)
  return names, np.asarray(rows, float)


def _make_mars(base, train=_MARS_TRAIN, test=_MARS_TEST, query=_MARS_QUERY):
  info = base / "info"
  info.mkdir(parents=True, exist_ok=True)
  for split, tracks, stem, var in (
      ("bbox_train", train, "train", "track_train_info"),
      ("bbox_test", test, "test", "track_test_info")):
    names, rows = _write_mars_split(base, split, tracks)
    (info / f"{stem}_name.txt").write_text("\n".join(names) + "\n")
    scipy.io.savemat(info / f"tracks_{stem}_info.mat", {var: rows})
  scipy.io.savemat(info / "query_IDX.mat",
                   {"query_IDX": np.asarray([query], float)})
  return base


def test_mars_splits_pids_cams_and_order(tmp_path):
  root = _make_mars(tmp_path)
  ds = vl.parse_mars(str(root))
  assert isinstance(ds, index.VideoDataset)
  assert ds.name == "mars" and ds.root == str(root)

  # Train: junk row dropped; raw pids 3, 3, 1, 7 relabelled in sorted order.
  kept = [t for t in _MARS_TRAIN if t[0] != -1]
  np.testing.assert_array_equal(ds.train.pids, [1, 1, 0, 2])
  np.testing.assert_array_equal(ds.train.camids, [c - 1 for _, c, _, _ in kept])
  for tracklet, (pid, cam, t, n) in zip(ds.train.tracklets, kept):
    assert _base_names(tracklet) == _mars_names(pid, cam, t, n)  # in order
    assert all(p.startswith(str(root / "bbox_train" / f"{pid:04d}"))
               for p in tracklet)
  np.testing.assert_array_equal(ds.train.num_frames, [n for *_, n in kept])

  # Query: query_IDX rows in their order, original pids.
  np.testing.assert_array_equal(ds.query.pids, [5, 2, 9])
  np.testing.assert_array_equal(ds.query.camids, [1, 0, 0])
  assert _base_names(ds.query.tracklets[1]) == _mars_names(2, 1, 1, 3)

  # Gallery: every other test row, junk dropped, distractor 0 kept.
  gallery_rows = [2, 4, 5, 6]
  np.testing.assert_array_equal(
      ds.gallery.pids, [_MARS_TEST[r - 1][0] for r in gallery_rows])
  np.testing.assert_array_equal(
      ds.gallery.camids, [_MARS_TEST[r - 1][1] - 1 for r in gallery_rows])
  assert _base_names(ds.gallery.tracklets[3]) == _mars_names(0, 4, 1, 2)
  assert ds.gallery.tracklets[3][0].startswith(str(root / "bbox_test" / "0000"))
  assert (ds.train.num_pids, ds.query.num_pids,
          ds.gallery.num_pids) == (3, 3, 3)


@pytest.mark.parametrize("sub", ["MARS", "mars"])
def test_mars_archive_subfolder_and_registry(tmp_path, sub):
  inner = _make_mars(tmp_path / sub)
  ds = layouts.parse_dataset("mars", str(tmp_path))
  assert ds.root == str(inner) and ds.name == "mars"
  assert (len(ds.train), len(ds.query), len(ds.gallery)) == (4, 3, 4)
  assert "mars" in layouts.VIDEO_DATASETS and layouts.is_video_dataset("mars")
  with pytest.raises(ValueError, match="'mars' does not take option.*"
                     "'split_index'; it accepts no options"):
    layouts.parse_dataset("mars", str(tmp_path), split_index=1)


def test_mars_missing_last_frame(tmp_path):
  root = _make_mars(tmp_path)
  last = root / "bbox_test" / "0005" / "0005C5T0001F003.jpg"
  os.remove(last)
  with pytest.raises(layout_common.DatasetNotFoundError) as e:
    vl.parse_mars(str(root))
  assert f"frame {str(last)!r} does not exist" in str(e.value)
  assert "row 4 [8 10 5 5]" in str(e.value)  # lines 8..10 of test_name.txt


def test_mars_statistics_checked_when_complete(tmp_path, monkeypatch):
  root = _make_mars(tmp_path)
  monkeypatch.setattr(vl, "MARS_STATS", {
      "train": (3, 4), "query": (3, 3), "gallery": (3, 4)})
  assert len(vl.parse_mars(str(root)).gallery) == 4
  monkeypatch.setattr(vl, "MARS_STATS", {
      "train": (3, 4), "query": (3, 3), "gallery": (2, 4)})
  with pytest.raises(layout_common.StatisticsError,
                     match="gallery: got 3 ids / 4 tracklets, expected 2 / 4"):
    vl.parse_mars(str(root))


def test_check_statistics_counts_tracklets():
  def split(pids, frames):
    return index.VideoSplit(
        tuple(tuple(f"f{i}_{j}.jpg" for j in range(frames))
              for i in range(len(pids))),
        np.asarray(pids, np.int32), np.zeros(len(pids), np.int32))
  ds = index.VideoDataset("v", "/r", train=split([0, 0, 1], 5),
                          query=split([4], 2), gallery=split([4, 0], 3))
  ok = {"train": (2, 3), "query": (1, 1), "gallery": (2, 2)}
  assert layout_common.check_statistics(ds, ok) is True
  # Counts are tracklets, not frames: 3 train tracklets hold 15 frames.
  assert layout_common.check_statistics(ds, dict(ok, train=(2, 15))) is False
  with pytest.raises(layout_common.StatisticsError,
                     match="train: got 2 ids / 3 tracklets, expected 2 / 2"):
    layout_common.check_statistics(ds, dict(ok, train=(2, 2)))


# ------------------------------------------------------ DukeMTMC-VideoReID --

# split -> (pid folder, tracklet folder) -> frame file names (any order).
_DUKE_VIDEO = {
    "train": {
        ("0001", "0001"): ["0001_C2_F0002_X00010.jpg",
                           "0001_C2_F0010_X00018.jpg",
                           "0001_C2_F0001_X00009.jpg"],
        ("0001", "0002"): ["0001_C5_F0001_X00100.jpg"],
        ("0005", "0001"): ["0005C3F0002X00201.jpg",  # older name format
                           "0005C3F0003X00202.jpg"],
    },
    "query": {
        ("0002", "0003"): ["0002_C1_F0001_X00001.jpg"],
        ("0009", "0001"): ["0009_C7_F0001_X00001.jpg",
                           "0009_C7_F0002_X00002.jpg"],
    },
    "gallery": {
        ("0002", "0004"): ["0002_C2_F0001_X00005.jpg"],
        ("0002", "0005"): ["0002_C1_F0003_X00050.jpg",
                           "0002_C1_F0002_X00049.jpg"],
        ("0009", "0002"): ["0009_C4_F0001_X00007.jpg"],
        ("7000", "0001"): ["7000_C8_F0001_X00070.jpg"],  # gallery-only id
    },
}


def _make_duke_video(base, content=_DUKE_VIDEO):
  for split, tracklets in content.items():
    (base / split).mkdir(parents=True, exist_ok=True)
    for (pid, t), frames in tracklets.items():
      for f in frames:
        _touch(base / split / pid / t / f)
  return base


def test_duke_video_splits_and_frame_order(tmp_path):
  root = _make_duke_video(tmp_path / "DukeMTMC-VideoReID")
  (root / "train" / "0001" / "0001" / "Thumbs.db").write_bytes(b"x")  # ignored
  ds = layouts.parse_dataset("dukemtmc_video", str(tmp_path))
  assert ds.name == "dukemtmc_video" and ds.root == str(root)

  assert [_base_names(t) for t in ds.train.tracklets] == [
      ["0001_C2_F0001_X00009.jpg", "0001_C2_F0002_X00010.jpg",
       "0001_C2_F0010_X00018.jpg"],
      ["0001_C5_F0001_X00100.jpg"],
      ["0005C3F0002X00201.jpg", "0005C3F0003X00202.jpg"]]
  np.testing.assert_array_equal(ds.train.pids, [0, 0, 1])
  np.testing.assert_array_equal(ds.train.camids, [1, 4, 2])
  assert ds.train.tracklets[0][0] == str(
      root / "train" / "0001" / "0001" / "0001_C2_F0001_X00009.jpg")

  np.testing.assert_array_equal(ds.query.pids, [2, 9])
  np.testing.assert_array_equal(ds.query.camids, [0, 6])
  np.testing.assert_array_equal(ds.gallery.pids, [2, 2, 9, 7000])
  np.testing.assert_array_equal(ds.gallery.camids, [1, 0, 3, 7])
  assert _base_names(ds.gallery.tracklets[1]) == [
      "0002_C1_F0002_X00049.jpg", "0002_C1_F0003_X00050.jpg"]


def test_duke_video_statistics(tmp_path, monkeypatch):
  root = _make_duke_video(tmp_path)
  monkeypatch.setattr(vl, "DUKEMTMC_VIDEO_STATS", {
      "train": (2, 3), "query": (2, 2), "gallery": (3, 3)})
  with pytest.raises(layout_common.StatisticsError,
                     match="gallery: got 3 ids / 4 tracklets, expected 3 / 3"):
    vl.parse_dukemtmc_video(str(root))


# --------------------------------------------------------------- iLIDS-VID --

# Person numbers (not contiguous, as in iLIDS-VID) and first frame numbers.
_ILIDS_PERSONS = [1, 2, 4, 7, 10, 12]
# ls_set rows: 1-based indices into the sorted person folders.
_LS_SET = [[3, 6, 1, 2, 4, 5], [1, 2, 3, 4, 5, 6]]


def _ilids_frames(cam, pid):
  start = 7 * pid + 3 * cam  # a different first frame for every sequence
  return [f"cam{cam}_person{pid:03d}_{start + k:05d}.png"
          for k in range(2 + pid % 3)]


def _make_ilids(base, persons=_ILIDS_PERSONS, ls_set=_LS_SET, cams=(1, 2)):
  for cam in cams:
    for pid in persons:
      for f in _ilids_frames(cam, pid):
        _touch(base / "i-LIDS-VID" / "sequences" / f"cam{cam}" /
               f"person{pid:03d}" / f)
  split_dir = base / "train-test people splits"
  split_dir.mkdir(parents=True, exist_ok=True)
  scipy.io.savemat(split_dir / "train_test_splits_ilidsvid.mat",
                   {"ls_set": np.asarray(ls_set, float)})
  return base


@pytest.mark.parametrize("split_index", [0, 1])
def test_ilidsvid_split(tmp_path, split_index):
  root = _make_ilids(tmp_path)
  ds = layouts.parse_dataset("ilidsvid", str(root), split_index=split_index)
  row = np.asarray(_LS_SET[split_index])
  persons = np.asarray(_ILIDS_PERSONS)
  test_ids = np.sort(persons[row[:3] - 1])  # the first half is the test set
  train_ids = np.sort(persons[row[3:] - 1])

  np.testing.assert_array_equal(ds.query.pids, test_ids)
  np.testing.assert_array_equal(ds.gallery.pids, test_ids)
  assert set(ds.query.camids) == {0} and set(ds.gallery.camids) == {1}
  np.testing.assert_array_equal(ds.train.pids, [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(ds.train.camids, [0, 1] * 3)
  for tracklet, pid, cam in zip(ds.train.tracklets, np.repeat(train_ids, 2),
                                ds.train.camids):
    assert _base_names(tracklet) == _ilids_frames(cam + 1, pid)  # in order
  for tracklet, pid in zip(ds.gallery.tracklets, test_ids):
    assert _base_names(tracklet) == _ilids_frames(2, pid)


def test_ilidsvid_statistics(tmp_path, monkeypatch):
  root = _make_ilids(tmp_path / "ilids-vid")
  monkeypatch.setattr(vl, "ILIDSVID_STATS", {
      "train": (3, 6), "query": (3, 3), "gallery": (3, 3)})
  assert vl.parse_ilidsvid(str(tmp_path)).root == str(root)
  monkeypatch.setattr(vl, "ILIDSVID_STATS", {
      "train": (3, 5), "query": (3, 3), "gallery": (3, 3)})
  with pytest.raises(layout_common.StatisticsError,
                     match="train: got 3 ids / 6 tracklets, expected 3 / 5"):
    vl.parse_ilidsvid(str(tmp_path))


# --------------------------------------------------------------- PRID-2011 --

# Frames per person in (cam_a, cam_b). Persons 3 and 8 have fewer than 21
# frames in one camera; person 11 has exactly 21 in cam_b. Persons above 200
# are different, single-camera people.
_PRID_FRAMES = {p: (21, 21) for p in range(1, 13)}
_PRID_FRAMES.update({3: (30, 20), 8: (20, 25), 11: (22, 21)})
_PRID_ONLY = {"cam_a": [201], "cam_b": [201, 300]}


def _prid_eligible():
  return sorted(p for p, (a, b) in _PRID_FRAMES.items() if min(a, b) >= 21)


def _make_prid(base, frames=_PRID_FRAMES, only=_PRID_ONLY):
  cams = base / "prid_2011" / "multi_shot"
  for p, counts in frames.items():
    for cam, n in zip(("cam_a", "cam_b"), counts):
      for k in range(1, n + 1):
        _touch(cams / cam / f"person_{p:04d}" / f"{k:04d}.png")
  for cam, persons in only.items():
    for p in persons:
      _touch(cams / cam / f"person_{p:04d}" / "0001.png")
  return base


def _prid_persons(split):
  """Person numbers of a split, from the folder names (train is relabelled)."""
  return [int(os.path.basename(os.path.dirname(t[0]))[7:])
          for t in split.tracklets]


def test_prid2011_generated_split(tmp_path):
  root = _make_prid(tmp_path)
  ds = vl.parse_prid2011(str(root), split_index=0, seed=0)
  train_ids = sorted(set(_prid_persons(ds.train)))
  test_ids = _prid_persons(ds.query)
  eligible = _prid_eligible()
  assert len(eligible) == 10
  assert len(train_ids) == 5 and len(test_ids) == 5
  assert not set(train_ids) & set(test_ids)
  assert sorted(train_ids + test_ids) == eligible

  assert _prid_persons(ds.gallery) == test_ids == sorted(test_ids)
  np.testing.assert_array_equal(ds.query.pids, test_ids)
  np.testing.assert_array_equal(ds.gallery.pids, test_ids)
  assert set(ds.query.camids) == {0} and set(ds.gallery.camids) == {1}
  np.testing.assert_array_equal(ds.train.pids, np.repeat(np.arange(5), 2))
  np.testing.assert_array_equal(ds.train.camids, [0, 1] * 5)
  # Frames in frame-number order, cam_a then cam_b.
  first = train_ids[0]
  assert _base_names(ds.train.tracklets[0]) == [
      f"{k:04d}.png" for k in range(1, _PRID_FRAMES[first][0] + 1)]
  assert "cam_b" in ds.train.tracklets[1][0]

  # The rule is "at least 21 frames in both cameras".
  relaxed = vl.parse_prid2011(str(root), min_frames=20)
  assert len(relaxed.query) + relaxed.train.num_pids == 12


def test_prid2011_splits_are_deterministic(tmp_path):
  root = _make_prid(tmp_path)

  def split(**kw):
    ds = vl.parse_prid2011(str(root), **kw)
    return tuple(sorted(set(_prid_persons(ds.train)))), tuple(
        _prid_persons(ds.query))

  s0 = split(split_index=0, seed=0)
  assert split(split_index=0, seed=0) == s0
  assert split(split_index=1, seed=0) != s0
  assert split(split_index=0, seed=1) != s0
  for i in range(vl.PRID2011_NUM_SPLITS):
    train, test = split(split_index=i)
    assert sorted(train + test) == _prid_eligible()
  with pytest.raises(ValueError, match="split_index 10 is out of range 0..9"):
    vl.parse_prid2011(str(root), split_index=10)
  # The registry passes both options through.
  ds = layouts.parse_dataset("prid2011", str(root), split_index=1, seed=0)
  assert (tuple(sorted(set(_prid_persons(ds.train)))),
          tuple(_prid_persons(ds.query))) == split(split_index=1)
  assert layouts.layout_options("prid2011") == (
      "split_index", "seed", "min_frames")


def test_prid2011_split_file(tmp_path):
  root = _make_prid(tmp_path / "prid2011")
  splits = [{"train": ["person_0001", "person_0002"], "test": ["person_0004"]},
            {"train": ["person_0003", "person_0009"],  # 3 is short: the file
             "test": ["person_0012", "person_0005"]}]  # decides regardless
  (root / "splits_prid2011.json").write_text(json.dumps(splits))
  ds = vl.parse_prid2011(str(tmp_path), split_index=1, seed=123)
  assert ds.root == str(root)
  assert sorted(set(_prid_persons(ds.train))) == [3, 9]
  np.testing.assert_array_equal(ds.query.pids, [5, 12])
  np.testing.assert_array_equal(ds.gallery.pids, [5, 12])
  with pytest.raises(ValueError, match="split_index 2 is out of range"):
    vl.parse_prid2011(str(root), split_index=2)

  for bad, needle in (
      ([{"train": ["person_0201"], "test": ["person_0004"]}],
       "names 'person_0201', which is not a person folder"),
      ([{"train": ["person_0001"], "test": ["person_0001"]}],
       "puts person_0001 in both train and test"),
      ({"train": []}, "must hold a non-empty JSON list")):
    (root / "splits_prid2011.json").write_text(json.dumps(bad))
    with pytest.raises(layout_common.LayoutError, match=needle):
      vl.parse_prid2011(str(root))


def test_prid2011_statistics(tmp_path, monkeypatch):
  root = _make_prid(tmp_path)
  monkeypatch.setattr(vl, "PRID2011_STATS", {
      "train": (5, 10), "query": (5, 5), "gallery": (4, 4)})
  with pytest.raises(layout_common.StatisticsError,
                     match="gallery: got 5 ids / 5 tracklets, expected 4 / 4"):
    vl.parse_prid2011(str(root))


def test_prid2011_split_helper():
  ids = np.arange(1, 179)
  train, test = vl.prid2011_split(ids, split_index=3, seed=0)
  assert train.size == test.size == 89
  np.testing.assert_array_equal(np.union1d(train, test), ids)
  # Depends on the set of ids, not their order.
  again = vl.prid2011_split(ids[::-1], split_index=3, seed=0)
  np.testing.assert_array_equal(again[0], train)


# ---------------------------------------------------------------- registry --


def test_registry_knows_every_dataset(tmp_path):
  with pytest.raises(ValueError) as e:
    layouts.parse_dataset("nope", str(tmp_path))
  assert ("known layouts: cuhk03_detected, cuhk03_labeled, custom, dukemtmc, "
          "dukemtmc_video, ilidsvid, market1501, mars, msmt17, occluded_duke, "
          "prid2011, synthetic, synthetic_video.") in str(e.value)
  assert layouts.VIDEO_DATASETS == ("mars", "dukemtmc_video", "ilidsvid",
                                    "prid2011", "synthetic_video")
  assert layouts.layout_options("ilidsvid") == ("split_index",)
  assert layouts.layout_options("cuhk03_labeled") == ("split", "classic_split")
  with pytest.raises(ValueError, match="'market1501' does not take option"):
    layouts.parse_dataset("market1501", str(tmp_path), seed=1)
