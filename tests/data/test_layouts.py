"""Tests for the Market-1501 layout parser on miniature folders."""

import os

import numpy as np
import pytest

from reidjax.data import layouts
from reidjax.data import market_layouts

# (split, file name) pairs of a miniature Market-1501 tree.
_TRAIN = [
    "0007_c1s1_000100_00.jpg",
    "0007_c3s1_000200_01.jpg",
    "0002_c2s1_000300_00.jpg",
    "0002_c6s2_000400_00.jpg",
    "0002_c6s2_000401_00.jpg",
    "0015_c5s3_000500_00.jpg",
    "-1_c1s1_000600_00.jpg",  # junk: dropped
    "0000_c4s1_000700_00.jpg",  # distractor: not a training identity
]
_QUERY = [
    "0003_c1s1_000010_00.jpg",
    "0009_c2s1_000020_00.jpg",
    "0003_c4s2_000030_00.jpg",
]
_GALLERY = [
    "0003_c2s1_000011_00.jpg",
    "0003_c1s1_000012_00.jpg",
    "0009_c5s1_000021_00.jpg",
    "0000_c3s1_000040_00.jpg",  # distractor: kept
    "0000_c6s1_000041_02.jpg",  # distractor: kept
    "-1_c2s1_000050_00.jpg",  # junk: dropped
    "-1_c1s1_000051_00.jpg",  # junk: dropped
]


def _make_market(base, train=_TRAIN, query=_QUERY, gallery=_GALLERY):
  for split, names in (("bounding_box_train", train), ("query", query),
                       ("bounding_box_test", gallery)):
    d = base / split
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
      (d / n).write_bytes(b"\xff\xd8")
  return base


def test_counts_relabel_camids(tmp_path):
  root = _make_market(tmp_path)
  (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"x")  # ignored
  ds = market_layouts.parse_market1501(str(root))
  assert ds.name == "market1501"
  assert ds.root == str(root)

  # Train: 6 real images; original pids 2, 7, 15 -> 0, 1, 2 in sorted order.
  names = [os.path.basename(p) for p in ds.train.paths]
  assert names == sorted(n for n in _TRAIN if not n.startswith(("-1", "0000")))
  expected_label = {"0002": 0, "0007": 1, "0015": 2}
  np.testing.assert_array_equal(
      ds.train.pids, [expected_label[n[:4]] for n in names])
  np.testing.assert_array_equal(
      ds.train.camids, [int(n[6]) - 1 for n in names])
  assert ds.train.pids.dtype == np.int32 and ds.train.camids.dtype == np.int32
  assert ds.num_train_pids == 3

  # Query keeps original pids; camids 0-based.
  names = [os.path.basename(p) for p in ds.query.paths]
  assert names == sorted(_QUERY)
  np.testing.assert_array_equal(ds.query.pids, [3, 3, 9])
  np.testing.assert_array_equal(ds.query.camids, [0, 3, 1])

  # Gallery: junk dropped, two distractors kept with pid 0.
  names = [os.path.basename(p) for p in ds.gallery.paths]
  assert names == sorted(n for n in _GALLERY if not n.startswith("-1"))
  assert len(ds.gallery) == 5
  np.testing.assert_array_equal(ds.gallery.pids, [0, 0, 3, 3, 9])
  np.testing.assert_array_equal(ds.gallery.camids, [2, 5, 0, 1, 4])
  assert all(os.path.isfile(p) for p in ds.gallery.paths)


def test_relabelling_is_independent_of_listing_order(tmp_path):
  a = market_layouts.parse_market1501(str(_make_market(tmp_path / "a")))
  b = market_layouts.parse_market1501(
      str(_make_market(tmp_path / "b", train=list(reversed(_TRAIN)))))
  np.testing.assert_array_equal(a.train.pids, b.train.pids)
  np.testing.assert_array_equal(a.train.camids, b.train.camids)


def test_archive_subfolder(tmp_path):
  inner = _make_market(tmp_path / market_layouts.MARKET1501_ARCHIVE_DIR)
  ds = market_layouts.parse_market1501(str(tmp_path), name="m")
  assert ds.name == "m"
  assert ds.root == str(inner)
  assert (len(ds.train), len(ds.query), len(ds.gallery)) == (6, 3, 5)
  assert ds.train.paths[0].startswith(str(inner))


def test_registry(tmp_path):
  root = _make_market(tmp_path)
  ds = layouts.parse_dataset("market1501", str(root))
  assert len(ds.gallery) == 5
  with pytest.raises(ValueError, match="Unknown dataset layout 'nope'.*market1501"):
    layouts.parse_dataset("nope", str(root))
