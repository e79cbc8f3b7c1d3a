"""Tests for the DukeMTMC, Occluded-Duke, MSMT17 and custom layout parsers."""

import os

import ml_collections
import numpy as np
import pytest

from reidjax.data import datasets
from reidjax.data import index
from reidjax.data import layout_common
from reidjax.data import layouts
from reidjax.data import market_layouts
from reidjax.data import msmt17

_DUKE_TRAIN = [
    "0005_c2_f0046985.jpg",
    "0005_c5_f0051341.jpg",
    "0001_c1_f0000001.jpg",
    "0001_c8_f0000002.jpg",
    "0001_c8_f0000003.jpg",
    "0012_c3_f0100000.jpg",
]
_DUKE_QUERY = ["0002_c1_f0000010.jpg", "0009_c7_f0000020.jpg"]
_DUKE_GALLERY = [
    "0002_c2_f0000011.jpg",
    "0009_c4_f0000021.jpg",
    "0000_c6_f0000030.jpg",  # pid 0 is an ordinary id in Duke: kept.
    "7000_c8_f0000040.jpg",  # gallery-only id: kept.
]


def _touch(path):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b"\xff\xd8")


def _make_duke(base, train=_DUKE_TRAIN, query=_DUKE_QUERY,
               gallery=_DUKE_GALLERY):
  for split, names in (("bounding_box_train", train), ("query", query),
                       ("bounding_box_test", gallery)):
    (base / split).mkdir(parents=True, exist_ok=True)
    for n in names:
      _touch(base / split / n)
  return base


def _names(split):
  return [os.path.basename(p) for p in split.paths]


# ---------------------------------------------------------------- DukeMTMC --


def test_duke_counts_relabel_camids(tmp_path):
  root = _make_duke(tmp_path)
  (root / "query" / "Thumbs.db").write_bytes(b"x")  # ignored
  ds = market_layouts.parse_dukemtmc(str(root))
  assert ds.name == "dukemtmc" and ds.root == str(root)

  assert _names(ds.train) == sorted(_DUKE_TRAIN)
  label = {"0001": 0, "0005": 1, "0012": 2}
  np.testing.assert_array_equal(
      ds.train.pids, [label[n[:4]] for n in sorted(_DUKE_TRAIN)])
  np.testing.assert_array_equal(
      ds.train.camids, [int(n[6]) - 1 for n in sorted(_DUKE_TRAIN)])
  assert ds.train.pids.dtype == np.int32 and ds.train.camids.dtype == np.int32

  assert _names(ds.query) == sorted(_DUKE_QUERY)
  np.testing.assert_array_equal(ds.query.pids, [2, 9])
  np.testing.assert_array_equal(ds.query.camids, [0, 6])

  assert _names(ds.gallery) == sorted(_DUKE_GALLERY)
  np.testing.assert_array_equal(ds.gallery.pids, [0, 2, 9, 7000])
  np.testing.assert_array_equal(ds.gallery.camids, [5, 1, 3, 7])


@pytest.mark.parametrize("parser,sub,name", [
    (market_layouts.parse_dukemtmc, market_layouts.DUKEMTMC_ARCHIVE_DIR,
     "dukemtmc"),
    (market_layouts.parse_occluded_duke,
     market_layouts.OCCLUDED_DUKE_ARCHIVE_DIR, "occluded_duke"),
])
def test_duke_archive_subfolder_and_registry(tmp_path, parser, sub, name):
  inner = _make_duke(tmp_path / sub)
  ds = parser(str(tmp_path))
  assert ds.name == name and ds.root == str(inner)
  assert (len(ds.train), len(ds.query), len(ds.gallery)) == (6, 2, 4)
  assert (ds.train.num_pids, ds.query.num_pids, ds.gallery.num_pids) == (
      3, 2, 4)
  via_registry = layouts.parse_dataset(name, str(tmp_path))
  assert via_registry.name == name
  assert via_registry.gallery.paths == ds.gallery.paths


# -------------------------------------------------------- check_statistics --


def _dataset(counts):
  """An index with the given per-split (ids, images); pids cycle 0..ids-1."""
  splits = {}
  for k, (ids, n) in counts.items():
    pids = np.arange(n, dtype=np.int32) % ids
    splits[k] = index.ImageSplit(tuple(f"{k}{i}.jpg" for i in range(n)),
                                 pids, np.zeros(n, np.int32))
  return index.ImageDataset(name="t", root="/r", **splits)


_EXPECTED = {"train": (3, 10), "query": (2, 4), "gallery": (4, 12)}


def test_check_statistics():
  assert layout_common.check_statistics(_dataset(_EXPECTED), _EXPECTED) is True
  # One split short on images: partial copy, not an error.
  partial = dict(_EXPECTED, gallery=(4, 11))
  assert layout_common.check_statistics(_dataset(partial), _EXPECTED) is False
  # Everything at least as big, but one split has extra images/ids.
  extra = dict(_EXPECTED, query=(3, 5))
  with pytest.raises(layout_common.StatisticsError) as e:
    layout_common.check_statistics(_dataset(extra), _EXPECTED)
  assert "query: got 3 ids / 5 images, expected 2 / 4" in str(e.value)
  assert "train" not in str(e.value).split("(", 1)[1]


def test_market_statistics_checked_when_complete(tmp_path, monkeypatch):
  root = tmp_path
  for split, names in (
      ("bounding_box_train", ["0002_c1s1_000001_00.jpg",
                              "0007_c2s1_000002_00.jpg"]),
      ("query", ["0003_c1s1_000003_00.jpg"]),
      ("bounding_box_test", ["0003_c2s1_000004_00.jpg",
                             "0000_c3s1_000005_00.jpg",
                             "-1_c3s1_000006_00.jpg"])):
    for n in names:
      _touch(root / split / n)
  # Gallery ids counted include distractor 0; junk is not counted.
  monkeypatch.setattr(market_layouts, "MARKET1501_STATS",
                      {"train": (2, 2), "query": (1, 1), "gallery": (2, 2)})
  assert len(market_layouts.parse_market1501(str(root)).gallery) == 2
  monkeypatch.setattr(market_layouts, "MARKET1501_STATS",
                      {"train": (2, 2), "query": (1, 1), "gallery": (1, 1)})
  with pytest.raises(layout_common.StatisticsError, match="gallery: got 2 ids"):
    market_layouts.parse_market1501(str(root))


def test_duke_statistics_checked_when_complete(tmp_path, monkeypatch):
  root = _make_duke(tmp_path)
  monkeypatch.setattr(market_layouts, "DUKEMTMC_STATS",
                      {"train": (3, 6), "query": (2, 2), "gallery": (4, 3)})
  with pytest.raises(layout_common.StatisticsError,
                     match="gallery: got 4 ids / 4"):
    market_layouts.parse_dukemtmc(str(root))


# ------------------------------------------------------------------ MSMT17 --

# (relative path, pid) per list; the camera is the third field of the name.
# list_val holds another image of train id 3 and one of id 1, which list_train
# lacks, so relabelling with and without it differs.
_MSMT_LISTS = {
    "list_train.txt": [("0000/0000_000_01_0303morning_0015_0.jpg", 0),
                       ("0000/0000_001_05_0303morning_0016_1.jpg", 0),
                       ("0003/0003_000_15_0303noon_0020_0.jpg", 3)],
    "list_val.txt": [("0001/0001_000_02_0303afternoon_0030_0.jpg", 1),
                     ("0003/0003_002_08_0303noon_0021_0.jpg", 3)],
    "list_query.txt": [("0000/0000_000_03_0113morning_0001_0.jpg", 0),
                       ("0010/0010_000_07_0113noon_0002_0.jpg", 10)],
    "list_gallery.txt": [("0000/0000_001_04_0113morning_0003_0.jpg", 0),
                         ("0010/0010_001_12_0113noon_0004_0.jpg", 10),
                         ("0011/0011_000_09_0113noon_0005_0.jpg", 11)],
}


def _make_msmt(base, version="V1", lists=_MSMT_LISTS):
  train_dir, test_dir = msmt17.MSMT17_VERSIONS[version]
  for list_name, entries in lists.items():
    image_dir = train_dir if list_name in ("list_train.txt",
                                           "list_val.txt") else test_dir
    base.mkdir(parents=True, exist_ok=True)
    (base / list_name).write_text(
        "".join(f"{rel} {pid}\n" for rel, pid in entries))
    for rel, _ in entries:
      _touch(base / image_dir / rel)
  return base


def _check_msmt_test_splits(ds, base, test_dir):
  assert ds.query.paths == tuple(
      str(base / test_dir / r) for r, _ in _MSMT_LISTS["list_query.txt"])
  np.testing.assert_array_equal(ds.query.pids, [0, 10])
  np.testing.assert_array_equal(ds.query.camids, [2, 6])
  assert ds.gallery.paths == tuple(
      str(base / test_dir / r) for r, _ in _MSMT_LISTS["list_gallery.txt"])
  np.testing.assert_array_equal(ds.gallery.pids, [0, 10, 11])
  np.testing.assert_array_equal(ds.gallery.camids, [3, 11, 8])
  assert all(os.path.isfile(p) for p in ds.gallery.paths)


@pytest.mark.parametrize("version,sub", [("V1", ""), ("V1", "MSMT17_V1"),
                                         ("V2", "MSMT17_V2")])
def test_msmt17_trains_on_list_train_only_by_default(tmp_path, version, sub):
  base = _make_msmt(tmp_path / sub if sub else tmp_path, version)
  train_dir, test_dir = msmt17.MSMT17_VERSIONS[version]
  ds = layouts.parse_dataset("msmt17", str(tmp_path))
  assert ds.name == "msmt17" and ds.root == str(base)

  # Train = list_train only, in list order; pids 0, 0, 3 -> 0, 0, 1.
  assert ds.train.paths == tuple(
      str(base / train_dir / r) for r, _ in _MSMT_LISTS["list_train.txt"])
  val_paths = {str(base / train_dir / r)
               for r, _ in _MSMT_LISTS["list_val.txt"]}
  assert not val_paths & set(ds.train.paths)
  np.testing.assert_array_equal(ds.train.pids, [0, 0, 1])
  np.testing.assert_array_equal(ds.train.camids, [0, 4, 14])
  assert ds.num_train_pids == 2
  _check_msmt_test_splits(ds, base, test_dir)


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt17_include_val_appends_list_val(tmp_path, version):
  base = _make_msmt(tmp_path, version)
  train_dir, test_dir = msmt17.MSMT17_VERSIONS[version]
  ds = layouts.parse_dataset("msmt17", str(tmp_path), include_val=True)
  tv = _MSMT_LISTS["list_train.txt"] + _MSMT_LISTS["list_val.txt"]
  assert ds.train.paths == tuple(str(base / train_dir / r) for r, _ in tv)
  # pids 0, 0, 3 | 1, 3 relabelled over the union {0, 1, 3} -> 0, 1, 2.
  np.testing.assert_array_equal(ds.train.pids, [0, 0, 2, 1, 2])
  np.testing.assert_array_equal(ds.train.camids, [0, 4, 14, 1, 7])
  assert ds.num_train_pids == 3
  # Contiguous 0..P-1, and the same original id gets the same label.
  np.testing.assert_array_equal(np.unique(ds.train.pids), np.arange(3))
  raw = np.array([pid for _, pid in tv])
  for label in range(3):
    assert np.unique(raw[ds.train.pids == label]).size == 1
  _check_msmt_test_splits(ds, base, test_dir)

  default = msmt17.parse_msmt17(str(tmp_path), include_val=False)
  assert ds.train.paths[:len(default.train)] == default.train.paths
  assert default.query.paths == ds.query.paths
  assert default.gallery.paths == ds.gallery.paths


def test_msmt17_options_through_the_registry_and_config(tmp_path):
  assert layouts.layout_options("msmt17") == ("include_val",)
  assert layouts.default_options("msmt17") == {"include_val": False}
  _make_msmt(tmp_path)
  config = ml_collections.ConfigDict(dict(
      name="msmt17", root=str(tmp_path), options=dict(include_val=True)))
  assert len(datasets.load_dataset(config).train) == 5
  config.options.include_val = False
  assert len(datasets.load_dataset(config).train) == 3
  with pytest.raises(ValueError, match="include_val must be True or False, "
                     "got 'yes'"):
    msmt17.parse_msmt17(str(tmp_path), include_val="yes")


def test_msmt17_statistics_with_and_without_val(tmp_path, monkeypatch):
  _make_msmt(tmp_path)
  # The official counts differ only in train (30,248 vs 32,621 images).
  assert msmt17.MSMT17_STATS == {
      "train": (1041, 30248), "query": (3060, 11659),
      "gallery": (3060, 82161)}
  assert msmt17.MSMT17_WITH_VAL_STATS == dict(
      msmt17.MSMT17_STATS, train=(1041, 32621))
  # Miniature "official" counts: each variant is checked against its own.
  test = {"query": (2, 2), "gallery": (3, 3)}
  monkeypatch.setattr(msmt17, "MSMT17_STATS", dict(test, train=(2, 3)))
  monkeypatch.setattr(msmt17, "MSMT17_WITH_VAL_STATS",
                      dict(test, train=(3, 5)))
  assert len(msmt17.parse_msmt17(str(tmp_path)).train) == 3
  assert len(msmt17.parse_msmt17(str(tmp_path), include_val=True).train) == 5
  # Checked against the other variant's counts, each copy is an error.
  monkeypatch.setattr(msmt17, "MSMT17_STATS", dict(test, train=(2, 2)))
  with pytest.raises(layout_common.StatisticsError,
                     match="train: got 2 ids / 3 images, expected 2 / 2"):
    msmt17.parse_msmt17(str(tmp_path))
  monkeypatch.setattr(msmt17, "MSMT17_WITH_VAL_STATS",
                      dict(test, train=(3, 3)))
  with pytest.raises(layout_common.StatisticsError,
                     match="train: got 3 ids / 5 images, expected 3 / 3"):
    msmt17.parse_msmt17(str(tmp_path), include_val=True)


# ------------------------------------------------------------------ custom --

_CUSTOM = {
    "train": ["17/0_a.jpg", "17/2_b.jpg", "4/1_x.png", "250/0_y.jpg"],
    "query": ["8/1_q.jpg"],
    "gallery": ["8/0_g.jpg", "9/3_h.jpeg"],
}


def _make_custom(base, layout=_CUSTOM):
  for split, rels in layout.items():
    (base / split).mkdir(parents=True, exist_ok=True)
    for rel in rels:
      _touch(base / split / rel)
  return base


def test_custom(tmp_path):
  root = _make_custom(tmp_path)
  (root / "train" / "17" / "notes.txt").write_text("ignored")
  ds = layouts.parse_dataset("custom", str(root))
  assert ds.name == "custom" and ds.root == str(root)
  train = sorted(str(root / "train" / r) for r in _CUSTOM["train"])
  assert ds.train.paths == tuple(train)
  # Folder pids 4, 17, 250 -> 0, 1, 2; camids used as written (0-based).
  rel_pid = {"4": 0, "17": 1, "250": 2}
  np.testing.assert_array_equal(
      ds.train.pids, [rel_pid[p.split(os.sep)[-2]] for p in train])
  np.testing.assert_array_equal(
      ds.train.camids, [int(os.path.basename(p)[0]) for p in train])
  np.testing.assert_array_equal(ds.query.pids, [8])
  np.testing.assert_array_equal(ds.query.camids, [1])
  np.testing.assert_array_equal(ds.gallery.pids, [8, 9])
  np.testing.assert_array_equal(ds.gallery.camids, [0, 3])


def test_registry_lists_all_layouts(tmp_path):
  with pytest.raises(ValueError) as e:
    layouts.parse_dataset("cuhk03", str(tmp_path))
  assert ("known layouts: cuhk03_detected, cuhk03_labeled, custom, dukemtmc, "
          "dukemtmc_video, ilidsvid, market1501, mars, msmt17, occluded_duke, "
          "prid2011, synthetic, synthetic_video.") in str(e.value)
