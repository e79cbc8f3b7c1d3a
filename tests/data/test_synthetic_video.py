"""Tests for the synthetic tracklet generator (MARS layout).

The output is read back with scipy.io.loadmat and the name lists alone, so
these tests check the MARS format itself, not our own parser of it.
"""

import collections
import dataclasses
import os
import re

import numpy as np
from PIL import Image
import pytest
import scipy.io

from reidjax.data import synthetic
from reidjax.data import synthetic_video as sv
from tests.data.test_synthetic import _files

SMALL = dict(num_train_ids=3, num_test_ids=5, num_cameras=3,
             tracklets_per_id=(2, 4), min_frames=4, max_frames=8, height=64,
             width=32, num_distractor_tracklets=3, num_junk_tracklets=2,
             jpeg_quality=90)
NAME = re.compile(r"^(\d{4}|00-1)C([1-9])T(\d{4})F(\d{3})\.jpg$")


def _fields(name):
  """(pid, cam, tracklet, frame) straight from a MARS frame name."""
  m = NAME.match(name)
  assert m, name
  pid = -1 if m.group(1) == "00-1" else int(m.group(1))
  return pid, int(m.group(2)), int(m.group(3)), int(m.group(4))


def _read(root, split):
  """(names, (T, 4) info) of 'train' or 'test', from the info files only."""
  with open(os.path.join(root, "info", f"{split}_name.txt")) as f:
    names = f.read().splitlines()
  mat = scipy.io.loadmat(os.path.join(root, "info",
                                      f"tracks_{split}_info.mat"))
  return names, mat[f"track_{split}_info"]


def _tracklets(root, split):
  """[(pid, cam, [frame paths])] in track-info row order."""
  names, info = _read(root, split)
  folder = os.path.join(root, "bbox_" + split)
  return [(int(pid), int(cam),
           [os.path.join(folder, n[:4], n) for n in names[s - 1:e]])
          for s, e, pid, cam in info]


def _load(path):
  with Image.open(path) as im:
    return np.asarray(im, np.float32)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("mars") / "small")
  out = sv.write_synthetic_mars(root, seed=5, **SMALL)
  return root, out


def test_layout_and_file_names(small):
  root, _ = small
  assert sorted(os.listdir(root)) == sorted(
      ["bbox_train", "bbox_test", "info", sv.MARKER_NAME])
  assert sorted(os.listdir(os.path.join(root, "info"))) == sorted(
      ["train_name.txt", "test_name.txt", "tracks_train_info.mat",
       "tracks_test_info.mat", "query_IDX.mat"])
  for split in ("bbox_train", "bbox_test"):
    folders = os.listdir(os.path.join(root, split))
    for folder in folders:
      names = os.listdir(os.path.join(root, split, folder))
      assert names, folder
      for n in names:
        assert NAME.match(n), n
        assert n[:4] == folder, (folder, n)
        with Image.open(os.path.join(root, split, folder, n)) as im:
          assert im.format == "JPEG" and im.mode == "RGB"
          assert im.size == (SMALL["width"], SMALL["height"])
  train = set(os.listdir(os.path.join(root, "bbox_train")))
  test = set(os.listdir(os.path.join(root, "bbox_test")))
  assert len(train) == SMALL["num_train_ids"]
  assert "0000" in test and "00-1" in test
  assert len(test) == SMALL["num_test_ids"] + 2
  assert not train & test


def test_name_lists_are_the_files_grouped_by_tracklet(small):
  root, _ = small
  for split in ("train", "test"):
    names, _ = _read(root, split)
    on_disk = []
    for d, _, files in os.walk(os.path.join(root, "bbox_" + split)):
      on_disk += files
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(on_disk)
    # Grouped by tracklet, frames in order: each tracklet's names are one
    # contiguous block with frame numbers 1, 2, ..., n.
    keys = [n[:-8] for n in names]  # Drops 'F001.jpg'.
    blocks = [k for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
    assert len(blocks) == len(set(blocks))
    for key in set(keys):
      frames = [_fields(n)[3] for n in names if n[:-8] == key]
      assert frames == list(range(1, len(frames) + 1)), key


def test_track_info_matches_the_name_lists(small):
  root, _ = small
  pids_by_split = {}
  for split in ("train", "test"):
    names, info = _read(root, split)
    assert info.ndim == 2 and info.shape[1] == 4
    assert np.issubdtype(info.dtype, np.integer)
    start, end, pid, cam = info.T
    # Contiguous 1-based inclusive ranges that cover the name list.
    assert start[0] == 1 and end[-1] == len(names)
    np.testing.assert_array_equal(start[1:], end[:-1] + 1)
    lengths = end - start + 1
    assert lengths.min() >= SMALL["min_frames"]
    assert lengths.max() <= SMALL["max_frames"]
    seen = set()
    per_cam = collections.defaultdict(list)
    for s, e, p, c in info:
      fields = [_fields(n) for n in names[s - 1:e]]
      assert {f[:3] for f in fields} == {(p, c, fields[0][2])}
      assert [f[3] for f in fields] == list(range(1, e - s + 2))
      assert (p, c, fields[0][2]) not in seen  # One row per tracklet.
      seen.add((p, c, fields[0][2]))
      per_cam[(p, c)].append(fields[0][2])
    # Tracklet numbers count from 1 per (pid, camera).
    for key, numbers in per_cam.items():
      assert sorted(numbers) == list(range(1, len(numbers) + 1)), key
    assert cam.min() >= 1 and cam.max() <= SMALL["num_cameras"]
    pids_by_split[split] = pid

  train, test = pids_by_split["train"], pids_by_split["test"]
  assert train.min() >= 1  # No distractors or junk in train.
  assert int((test == 0).sum()) == SMALL["num_distractor_tracklets"]
  assert int((test == -1).sum()) == SMALL["num_junk_tracklets"]
  train_ids, test_ids = set(train.tolist()), set(test[test > 0].tolist())
  assert len(train_ids) == SMALL["num_train_ids"]
  assert len(test_ids) == SMALL["num_test_ids"]
  assert train_ids | test_ids == set(
      range(1, SMALL["num_train_ids"] + SMALL["num_test_ids"] + 1))
  # Every id: 2..4 tracklets over >= 2 cameras.
  for split in ("train", "test"):
    _, info = _read(root, split)
    for p in set(info[:, 2].tolist()) - {0, -1}:
      rows = info[info[:, 2] == p]
      lo, hi = SMALL["tracklets_per_id"]
      assert lo <= len(rows) <= hi, p
      assert len(set(rows[:, 3].tolist())) >= 2, p


def test_queries_have_cross_camera_gallery_matches(small):
  root, _ = small
  _, info = _read(root, "test")
  query = scipy.io.loadmat(os.path.join(root, "info", "query_IDX.mat"))
  idx = query["query_IDX"]
  assert idx.shape == (1, SMALL["num_test_ids"])
  assert np.issubdtype(idx.dtype, np.integer)
  rows = idx[0] - 1  # 1-based in the file.
  assert rows.min() >= 0 and rows.max() < len(info)
  assert len(set(rows.tolist())) == len(rows)
  q_pids = info[rows, 2]
  assert sorted(q_pids.tolist()) == sorted(set(info[info[:, 2] > 0, 2]))
  gallery = np.setdiff1d(np.arange(len(info)), rows)
  for r in rows:
    pid, cam = info[r, 2], info[r, 3]
    g = info[gallery]
    assert np.any((g[:, 2] == pid) & (g[:, 3] != cam)), (pid, cam)


def test_returned_counts_match_the_files(small):
  root, out = small
  assert out["generator"] == "reidjax.data.synthetic_video"
  assert out["params"]["tracklets_per_id"] == [2, 4]
  assert out["params"]["seed"] == 5
  counts = out["counts"]
  for split in ("train", "test"):
    names, info = _read(root, split)
    assert counts[f"{split}_frames"] == len(names)
    assert counts[f"{split}_tracklets"] == len(info)
    assert counts[f"{split}_ids"] == len(set(info[info[:, 2] > 0, 2]))
  assert counts["query_tracklets"] == SMALL["num_test_ids"]
  assert counts["gallery_tracklets"] == counts["test_tracklets"] - 5
  # The same dict is on disk in the marker.
  assert synthetic.read_marker(root, sv.MARKER_NAME) == out


def test_deterministic_by_seed(small, tmp_path):
  root, _ = small
  again = str(tmp_path / "a")
  sv.write_synthetic_mars(again, seed=5, **SMALL)
  ref = _files(root)
  assert _files(again) == ref  # .mat files included: no timestamps.
  other = str(tmp_path / "b")
  sv.write_synthetic_mars(other, seed=6, **SMALL)
  changed = _files(other)
  shared = set(changed) & set(ref) - {sv.MARKER_NAME}
  jpgs = [k for k in shared if k.endswith(".jpg")]
  assert jpgs and all(changed[k] != ref[k] for k in jpgs)


def test_idempotent_and_refuses_foreign_folders(small, tmp_path, monkeypatch):
  root, out = small
  before = _files(root)

  def fail(*a, **k):
    raise AssertionError("must not rewrite a complete set")

  monkeypatch.setattr(sv, "_write", fail)
  assert sv.write_synthetic_mars(root, seed=5, **SMALL) == out
  assert _files(root) == before

  with pytest.raises(ValueError, match="different parameters"):
    sv.write_synthetic_mars(root, seed=5, **dict(SMALL, max_frames=9))

  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="Refusing"):
    sv.write_synthetic_mars(str(foreign), **SMALL)
  assert os.listdir(foreign) == ["notes.txt"]
  assert (foreign / "notes.txt").read_text() == "mine"

  # A synthetic Market-1501 set is foreign too: its marker is another one.
  market = tmp_path / "market"
  market.mkdir()
  (market / synthetic.MARKER_NAME).write_text("{}")
  with pytest.raises(ValueError, match="Refusing"):
    sv.write_synthetic_mars(str(market), **SMALL)

  a_file = tmp_path / "file"
  a_file.write_text("x")
  with pytest.raises(ValueError, match="not a folder"):
    sv.write_synthetic_mars(str(a_file), **SMALL)
  # No temporary folders are left behind by any of the refusals.
  assert sorted(os.listdir(tmp_path)) == ["file", "foreign", "market"]


def test_empty_folder_is_filled_and_cli(tmp_path, capsys):
  root = tmp_path / "empty"
  root.mkdir()
  sv.main(["--root", str(root), "--num_train_ids", "1", "--num_test_ids",
           "1", "--num_cameras", "2", "--tracklets_per_id", "2",
           "--min_frames", "2", "--max_frames", "2", "--height", "32",
           "--width", "16", "--num_distractor_tracklets", "0",
           "--num_junk_tracklets", "0"])
  assert "2 train / 2 test tracklets, 8 frames" in capsys.readouterr().out
  names, info = _read(str(root), "train")
  assert len(names) == 4
  np.testing.assert_array_equal(info[:, :2], [[1, 2], [3, 4]])
  # Two tracklets over two distinct cameras: T0001 in each.
  assert sorted(n[4:] for n in names) == sorted(
      f"C{c}T0001F00{f}.jpg" for c in info[:, 3] for f in (1, 2))
  assert sorted(os.listdir(tmp_path)) == ["empty"]


@pytest.mark.parametrize("bad, message", [
    (dict(tracklets_per_id=1), "tracklets_per_id"),
    (dict(tracklets_per_id=(3, 2)), "tracklets_per_id"),
    (dict(tracklets_per_id=(2, 3, 4)), "tracklets_per_id"),
    (dict(num_cameras=1), "num_cameras"),
    (dict(num_cameras=10), "num_cameras"),
    (dict(max_frames=1000), "max_frames"),
    (dict(min_frames=5, max_frames=4), "min_frames"),
    (dict(num_test_ids=0), "num_test_ids"),
    (dict(num_junk_tracklets=-1), "num_junk_tracklets"),
    (dict(jpeg_quality=100), "jpeg_quality"),
])
def test_bad_parameters(tmp_path, bad, message):
  with pytest.raises(ValueError, match=message):
    sv.write_synthetic_mars(str(tmp_path / "x"), **bad)
  assert not os.listdir(tmp_path)


def test_identity_is_fixed_per_pid_across_tracklets():
  params = dict(SMALL, seed=0, num_train_ids=4, num_test_ids=4, version=1,
                tracklets_per_id=[2, 4])
  by_pid = collections.defaultdict(list)
  for t in sv._plan(params):  # pylint: disable=protected-access
    by_pid[t.pid].append(t.identity)
  real = {p: ids for p, ids in by_pid.items() if p > 0}
  assert len(real) == 8
  for p, ids in real.items():
    assert all(i == ids[0] for i in ids), p
  firsts = [ids[0] for ids in real.values()]
  assert all(a != b for i, a in enumerate(firsts) for b in firsts[i + 1:])


def test_frames_move_gradually_within_a_tracklet(small):
  """Consecutive frames differ a little, other people a lot.

  A static generator fails the lower bound and the drift check, one that
  draws each frame independently fails the upper bound.
  """
  root, _ = small
  tracks = [t for t in _tracklets(root, "test") if t[0] > 0]
  frames = {i: np.stack([_load(p) for p in t[2]]) for i, t in
            enumerate(tracks)}
  consecutive, drift, other_id = [], [], []
  for i, (pid, cam, _) in enumerate(tracks):
    f = frames[i]
    consecutive.append(np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3)))
    drift.append(np.abs(f[-1] - f[0]).mean())
    # Another person, same camera (so the same background style).
    for j, (pid2, cam2, _) in enumerate(tracks):
      if pid2 != pid and cam2 == cam:
        other_id.append(np.abs(frames[j][0] - f[0]).mean())
  consecutive = np.concatenate(consecutive)
  assert other_id, "the fixture needs two ids in one camera"
  assert np.median(consecutive) > 0.5  # Not a still image.
  assert np.median(consecutive) < 0.5 * np.median(other_id), (
      np.median(consecutive), np.median(other_id))
  # Motion accumulates: first-to-last differs more than frame-to-frame.
  assert np.median(drift) > 1.3 * np.median(consecutive), (
      np.median(drift), np.median(consecutive))


def test_tracklet_views_are_smooth_with_few_broken_frames():
  rng = np.random.default_rng(0)
  n, fixed = 12, ("flip", "back", "stride", "bg_shift", "light", "blur",
                  "noise", "jpeg_quality")
  with_occ, occ_frames, bad_frames = 0, 0, 0
  for _ in range(200):
    t = sv.sample_tracklet_views(rng, n)
    v = t.views
    assert len(v) == n == len(t.occluded) == len(t.bad_crop)
    for name in fixed:
      assert len({getattr(x, name) for x in v}) == 1, name
    np.testing.assert_allclose(np.diff([x.phase for x in v]),
                               v[1].phase - v[0].phase, rtol=1e-9)
    good = ~t.bad_crop
    # Position moves by < 0.05 of the width per frame where the crop is fine.
    dx = np.array([x.dx for x in v])
    assert np.all(np.abs(np.diff(dx))[good[1:] & good[:-1]] < 0.05)
    occ = np.flatnonzero(t.occluded)
    if occ.size:
      with_occ += 1
      assert occ.size <= sv.MAX_OCCLUDED_RUN
      np.testing.assert_array_equal(occ, np.arange(occ[0], occ[-1] + 1))
      assert all(v[i].occluder == "box" for i in occ)
    assert all(x.occluder == "none" for x, o in zip(v, t.occluded) if not o)
    assert t.bad_crop.sum() <= sv.MAX_BAD_CROPS
    occ_frames += occ.size
    bad_frames += int(t.bad_crop.sum())
  assert 0.35 < with_occ / 200 < 0.65
  assert occ_frames / (200 * n) < 0.15 and bad_frames / (200 * n) < 0.1


def test_gradual_views_beat_independent_views():
  """Rendered without JPEG: walking frames vs freshly sampled views."""
  rng = np.random.default_rng(1)
  camera = synthetic.make_cameras(0, 1)[0]
  walk, independent = [], []
  for _ in range(10):
    identity = synthetic.sample_identity(rng)
    t = sv.sample_tracklet_views(rng, 6, occlusion_p=0.0, bad_crop_p=0.0)
    imgs = np.stack([synthetic.render(identity, camera, v, (64, 32))
                     for v in t.views]).astype(np.float32)
    walk.append(np.abs(np.diff(imgs, axis=0)).mean())
    views = [dataclasses.replace(synthetic.sample_view(rng), occluder="none")
             for _ in range(2)]
    a, b = (synthetic.render(identity, camera, v, (64, 32)).astype(np.float32)
            for v in views)
    independent.append(np.abs(a - b).mean())
  assert np.mean(walk) < 0.5 * np.mean(independent), (walk, independent)
