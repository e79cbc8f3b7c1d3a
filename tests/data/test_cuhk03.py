"""Tests for the CUHK03 (767/700) parser on miniature copies of the release."""

import logging
import os

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from reidjax.data import cuhk03
from reidjax.data import layout_common
from reidjax.data import layouts

# Miniature cuhk-03.mat: camera pair -> person -> 1-based slots holding an
# image (slots 1-5: camera 1, 6-10: camera 2). Detected boxes lack one image.
_SLOTS = {
    "labeled": [
        [[1, 2, 6, 7], [1, 6], [1, 6, 8]],  # pair 1: persons 1..3
        [[1, 2, 6], [1, 6]],  # pair 2: persons 1..2
    ],
    "detected": [
        [[1, 2, 6, 7], [1, 6], [1, 6]],
        [[1, 2, 6], [1, 6]],
    ],
}
# Dataset label of (pair, person); train persons and test persons.
_LABEL = {(1, 1): 1, (1, 2): 2, (1, 3): 3, (2, 1): 4, (2, 2): 5}
_TRAIN_LABELS = (2, 4)


def _pixels(variant, pair, person, slot):
  """A distinct (H, W, 3) uint8 image, H != W so a transpose would show."""
  seed = 1000 * ("labeled", "detected").index(variant) + 100 * pair + (
      10 * person + slot)
  return np.random.default_rng(seed).integers(0, 256, (5, 3, 3), np.uint8)


def _name(pair, person, slot):
  return f"{pair}_{person:03d}_{1 if slot <= 5 else 2}_{slot:02d}.png"


def _write_raw_mat(path, slots=_SLOTS):
  """Writes cuhk-03.mat as MATLAB v7.3 stores it (column-major cells)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with h5py.File(path, "w") as f:
    refs = f.create_group("#refs#")
    count = [0]

    def put(data):
      count[0] += 1
      return refs.create_dataset(f"r{count[0]}", data=data).ref

    for variant, pairs in slots.items():
      pair_refs = []
      for p, persons in enumerate(pairs, 1):
        # HDF5 holds the (persons, 10) MATLAB cell transposed: (10, persons).
        cell = np.empty((10, len(persons)), dtype=h5py.ref_dtype)
        for n, filled in enumerate(persons, 1):
          for s in range(1, 11):
            if s in filled:
              cell[s - 1, n - 1] = put(_pixels(variant, p, n, s).T)
            else:  # MATLAB's empty cell: a uint64 [0 0].
              cell[s - 1, n - 1] = put(np.zeros(2, np.uint64))
        pair_refs.append(put(cell))
      f.create_dataset(variant, data=np.array([pair_refs], h5py.ref_dtype))


def _rows(variant):
  """filelist rows: (name, label, camera) for every image of the variant."""
  rows = []
  for p, persons in enumerate(_SLOTS[variant], 1):
    for n, filled in enumerate(persons, 1):
      for s in filled:
        rows.append((_name(p, n, s), _LABEL[p, n], 1 if s <= 5 else 2))
  return rows


def _split_rows(rows):
  """1-based train / query / gallery rows: the first image of each camera of
  a test person is its query, the rest gallery."""
  train, query, gallery = [], [], []
  seen = set()
  for i, (_, label, cam) in enumerate(rows, 1):
    if label in _TRAIN_LABELS:
      train.append(i)
    elif (label, cam) not in seen:
      seen.add((label, cam))
      query.append(i)
    else:
      gallery.append(i)
  return train, query, gallery


def _write_config(path, variant, *, rows=None, splits=None, drop=()):
  rows = _rows(variant) if rows is None else rows
  train, query, gallery = _split_rows(rows) if splits is None else splits
  filelist = np.empty((len(rows), 1), object)
  filelist[:, 0] = [r[0] for r in rows]
  col = lambda v: np.asarray(v, float).reshape(-1, 1)
  content = {"filelist": filelist, "labels": col([r[1] for r in rows]),
             "camId": col([r[2] for r in rows]), "train_idx": col(train),
             "query_idx": col(query), "gallery_idx": col(gallery)}
  for k in drop:
    del content[k]
  path.parent.mkdir(parents=True, exist_ok=True)
  scipy.io.savemat(path, content)


def _make_cuhk03(base, *, raw=True, variants=("labeled", "detected")):
  for v in variants:
    _write_config(base / f"cuhk03_new_protocol_config_{v}.mat", v)
  if raw:
    _write_raw_mat(base / "cuhk03_release" / "cuhk-03.mat")
  return base


def test_extracts_once_then_indexes(tmp_path, caplog, monkeypatch):
  root = _make_cuhk03(tmp_path)
  with caplog.at_level(logging.INFO, logger=cuhk03.__name__):
    ds = cuhk03.parse_cuhk03(str(root))
  assert "extracting the labeled images" in caplog.text
  assert ds.name == "cuhk03" and ds.root == str(root)

  # Every labeled image was written once as a PNG, in (H, W, 3) orientation.
  image_dir = root / "images_labeled"
  rows = _rows("labeled")
  assert sorted(os.listdir(image_dir)) == sorted(r[0] for r in rows)
  assert not (root / "images_detected").exists()
  for p, persons in enumerate(_SLOTS["labeled"], 1):
    for n, filled in enumerate(persons, 1):
      for s in filled:
        got = np.asarray(Image.open(image_dir / _name(p, n, s)))
        np.testing.assert_array_equal(got, _pixels("labeled", p, n, s))

  # Items follow the config rows; labels, cameras and relabelling.
  train, query, gallery = _split_rows(rows)
  for split, idx in ((ds.train, train), (ds.query, query),
                     (ds.gallery, gallery)):
    assert split.paths == tuple(str(image_dir / rows[i - 1][0]) for i in idx)
    np.testing.assert_array_equal(split.camids,
                                  [rows[i - 1][2] - 1 for i in idx])
    assert split.pids.dtype == np.int32 and split.camids.dtype == np.int32
  np.testing.assert_array_equal(
      ds.train.pids, [_TRAIN_LABELS.index(rows[i - 1][1]) for i in train])
  np.testing.assert_array_equal(ds.query.pids, [1, 1, 3, 3, 5, 5])
  np.testing.assert_array_equal(ds.gallery.pids, [1, 1, 3])
  assert (len(ds.train), len(ds.query), len(ds.gallery)) == (5, 6, 3)

  # Second run: the PNGs are there, nothing is extracted again.
  def no_extraction(*args):
    raise AssertionError("extracted twice")
  monkeypatch.setattr(cuhk03, "extract_cuhk03_images", no_extraction)
  again = cuhk03.parse_cuhk03(str(root))
  assert again.gallery.paths == ds.gallery.paths


def test_detected_variant_via_registry(tmp_path):
  root = _make_cuhk03(tmp_path)
  ds = layouts.parse_dataset("cuhk03_detected", str(root))
  assert ds.name == "cuhk03_detected"
  assert ds.train.paths[0].startswith(str(root / "images_detected"))
  # Detected lacks image 1_003_2_08.png: one gallery image fewer.
  assert (len(ds.train), len(ds.query), len(ds.gallery)) == (5, 6, 2)
  assert "cuhk03_detected" in layouts.IMAGE_DATASETS
  assert not layouts.is_video_dataset("cuhk03_detected")
  # The variant is implied by the name, not an option.
  with pytest.raises(ValueError, match="does not take option.*'variant'"):
    layouts.parse_dataset("cuhk03_labeled", str(root), variant="detected")
  with pytest.raises(ValueError, match="variant 'both'"):
    cuhk03.parse_cuhk03(str(root), variant="both")


def test_preextracted_images_without_raw_mat(tmp_path):
  inner = _make_cuhk03(tmp_path / "cuhk03", raw=False, variants=("labeled",))
  (inner / "images_labeled").mkdir()
  for name, _, _ in _rows("labeled"):
    (inner / "images_labeled" / name).write_bytes(b"\x89PNG")
  ds = layouts.parse_dataset("cuhk03_labeled", str(tmp_path))
  assert ds.root == str(inner)
  assert (ds.train.num_pids, ds.query.num_pids,
          ds.gallery.num_pids) == (2, 3, 2)


def test_raw_mat_lacking_a_listed_image(tmp_path):
  root = _make_cuhk03(tmp_path, variants=())
  rows = _rows("labeled") + [(_name(2, 2, 9), 5, 2)]  # slot 9 is empty
  _write_config(root / "cuhk03_new_protocol_config_labeled.mat", "labeled",
                rows=rows)
  with pytest.raises(layout_common.LayoutError,
                     match="no labeled image for 1 file.*'2_002_2_09.png'"):
    cuhk03.parse_cuhk03(str(root))


def test_statistics_checked_when_complete(tmp_path, monkeypatch):
  root = _make_cuhk03(tmp_path, variants=("labeled",))
  monkeypatch.setitem(cuhk03.CUHK03_STATS, "labeled",
                      {"train": (2, 5), "query": (3, 6), "gallery": (2, 3)})
  assert len(cuhk03.parse_cuhk03(str(root)).gallery) == 3
  monkeypatch.setitem(cuhk03.CUHK03_STATS, "labeled",
                      {"train": (2, 5), "query": (3, 6), "gallery": (2, 2)})
  with pytest.raises(layout_common.StatisticsError,
                     match="gallery: got 2 ids / 3 images, expected 2 / 2"):
    cuhk03.parse_cuhk03(str(root))


# ------------------------------------------------------ the classic protocol --

# testsets of the miniature cuhk-03.mat: (pair, person) test persons.
_TESTSETS = ([(1, 2), (2, 1)], [(1, 1)])


def _add_testsets(path, testsets=_TESTSETS):
  """Adds cuhk-03.mat's ``testsets`` cell (each a (persons, 2) matrix)."""
  with h5py.File(path, "a") as f:
    refs = []
    for k, rows in enumerate(testsets):
      # HDF5 holds the MATLAB (persons, 2) matrix transposed, as doubles.
      data = np.asarray(rows, np.float64).T
      refs.append(f["#refs#"].create_dataset(f"t{k}", data=data).ref)
    f.create_dataset("testsets", data=np.array([refs], h5py.ref_dtype).T)


def test_classic_split(tmp_path):
  # Only cuhk-03.mat: the classic split needs no 767/700 config.
  raw = tmp_path / "cuhk03_release" / "cuhk-03.mat"
  _write_raw_mat(raw)
  _add_testsets(raw)
  ds = layouts.parse_dataset("cuhk03_labeled", str(tmp_path), split="classic")
  image_dir = tmp_path / "images_labeled"
  # Test persons (1, 2) and (2, 1): labels 2 and 4 in (pair, person) order.
  test_names = ["1_002_1_01.png", "1_002_2_06.png", "2_001_1_01.png",
                "2_001_1_02.png", "2_001_2_06.png"]
  assert ds.query is ds.gallery
  assert ds.query.paths == tuple(str(image_dir / n) for n in test_names)
  np.testing.assert_array_equal(ds.query.pids, [2, 2, 4, 4, 4])
  np.testing.assert_array_equal(ds.query.camids, [0, 1, 0, 0, 1])
  # Train: persons (1, 1), (1, 3), (2, 2) relabelled 0, 1, 2.
  assert [os.path.basename(p) for p in ds.train.paths] == [
      "1_001_1_01.png", "1_001_1_02.png", "1_001_2_06.png", "1_001_2_07.png",
      "1_003_1_01.png", "1_003_2_06.png", "1_003_2_08.png",
      "2_002_1_01.png", "2_002_2_06.png"]
  np.testing.assert_array_equal(ds.train.pids, [0, 0, 0, 0, 1, 1, 1, 2, 2])
  np.testing.assert_array_equal(ds.train.camids, [0, 0, 1, 1, 0, 1, 1, 0, 1])
  got = np.asarray(Image.open(image_dir / "2_001_1_02.png"))
  np.testing.assert_array_equal(got, _pixels("labeled", 2, 1, 2))
  # The second split, and the detected boxes (person (1, 3) lacks slot 8).
  other = cuhk03.parse_cuhk03(str(tmp_path), split="classic", classic_split=1,
                              variant="detected")
  np.testing.assert_array_equal(other.query.pids, [1, 1, 1, 1])
  assert len(other.train) == 13 - 4  # 13 detected images, 4 of (1, 1).


def test_classic_split_errors(tmp_path):
  raw = tmp_path / "cuhk-03.mat"
  _write_raw_mat(raw)
  with pytest.raises(layout_common.LayoutError, match="'testsets'"):
    cuhk03.parse_cuhk03(str(tmp_path), split="classic")
  _add_testsets(raw, ([(1, 2), (3, 1)], [(1, 1)]))
  with pytest.raises(layout_common.LayoutError, match=r"\(3, 1\)"):
    cuhk03.parse_cuhk03(str(tmp_path), split="classic")
  with pytest.raises(ValueError, match="classic_split must be in 0..1"):
    cuhk03.parse_cuhk03(str(tmp_path), split="classic", classic_split=2)
  with pytest.raises(ValueError, match="split='classic' only"):
    cuhk03.parse_cuhk03(str(tmp_path), classic_split=1)
  with pytest.raises(ValueError, match="'1367/100'"):
    cuhk03.parse_cuhk03(str(tmp_path), split="1367/100")
  (tmp_path / "empty").mkdir()
  with pytest.raises(layout_common.DatasetNotFoundError, match="testsets"):
    cuhk03.parse_cuhk03(str(tmp_path / "empty"), split="classic")
