"""Tests for the synthetic pedestrian generator (Market-1501 layout)."""

import collections
import dataclasses
import os

import numpy as np
from PIL import Image
import pytest

from reidjax.data import layouts
from reidjax.data import synthetic

SMALL = dict(num_train_ids=6, num_test_ids=7, num_cameras=4, images_per_id=8,
             num_distractors=5, num_junk=3, image_size=(96, 48))


def _files(root):
  """{relative path: bytes} of every file under root."""
  out = {}
  for d, _, names in os.walk(root):
    for n in names:
      p = os.path.join(d, n)
      with open(p, "rb") as f:
        out[os.path.relpath(p, root)] = f.read()
  return out


def _name_fields(path):
  """(pid, 0-based camid) straight from a Market file name."""
  pid, rest = os.path.basename(path).split("_c", 1)
  return int(pid), int(rest[0]) - 1


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("syn") / "small")
  assert synthetic.write_synthetic_market(root, seed=3, **SMALL) == root
  return root


def _map_rank1(dist, q_pids, g_pids, q_cams, g_cams):
  """Market-protocol mAP / rank-1 (same pid and camera gallery excluded)."""
  aps, r1 = [], []
  for i in range(len(q_pids)):
    keep = ~((g_pids == q_pids[i]) & (g_cams == q_cams[i]))
    order = np.argsort(dist[i][keep], kind="stable")
    match = g_pids[keep][order] == q_pids[i]
    pos = np.flatnonzero(match)
    assert pos.size, "every query needs a cross-camera match"
    aps.append(np.mean(np.arange(1, pos.size + 1) / (pos + 1)))
    r1.append(match[0])
  return float(np.mean(aps)), float(np.mean(r1))


def test_map_helper_on_known_ranking():
  # Query pid 1 cam 0; gallery ranked [x, 1, x, 1(same cam: ignored), 1].
  g_pids = np.array([2, 1, 3, 1, 1])
  g_cams = np.array([1, 1, 1, 0, 2])
  dist = np.array([[0.0, 1.0, 2.0, 0.5, 3.0]])
  m, r1 = _map_rank1(dist, np.array([1]), g_pids, np.array([0]), g_cams)
  np.testing.assert_allclose(m, (1 / 2 + 2 / 4) / 2)
  assert r1 == 0.0


def test_parser_reads_the_set(small):
  ds = layouts.parse_market1501(small)
  n = SMALL["images_per_id"]
  assert len(ds.train) == SMALL["num_train_ids"] * n
  assert ds.num_train_pids == SMALL["num_train_ids"]
  np.testing.assert_array_equal(np.unique(ds.train.pids),
                                np.arange(SMALL["num_train_ids"]))
  real = ds.gallery.pids > 0
  assert len(ds.query) + int(real.sum()) == SMALL["num_test_ids"] * n
  assert int((ds.gallery.pids == 0).sum()) == SMALL["num_distractors"]
  # Test pids: 1..N, the same set in query and gallery, disjoint from train.
  train_orig = {_name_fields(p)[0] for p in ds.train.paths}
  test_ids = set(ds.query.pids.tolist())
  assert test_ids == set(ds.gallery.pids[real].tolist())
  assert len(test_ids) == SMALL["num_test_ids"]
  assert not train_orig & test_ids
  assert train_orig | test_ids == set(
      range(1, SMALL["num_train_ids"] + SMALL["num_test_ids"] + 1))
  for split in (ds.train, ds.query, ds.gallery):
    assert split.camids.min() >= 0
    assert split.camids.max() < SMALL["num_cameras"]


def test_junk_and_distractors_on_disk(small):
  names = os.listdir(os.path.join(small, "bounding_box_test"))
  assert sum(n.startswith("-1_c") for n in names) == SMALL["num_junk"]
  assert sum(n.startswith("0000_c") for n in names) == SMALL["num_distractors"]
  for split in ("bounding_box_train", "query"):
    assert not any(n.startswith(("-1_", "0000_"))
                   for n in os.listdir(os.path.join(small, split)))


def test_cameras_and_cross_camera_matches(small):
  ds = layouts.parse_market1501(small)
  cams = collections.defaultdict(set)
  for p in ds.train.paths + ds.query.paths + ds.gallery.paths:
    pid, cam = _name_fields(p)
    cams[pid].add(cam)
  cams.pop(0)
  assert len(cams) == SMALL["num_train_ids"] + SMALL["num_test_ids"]
  assert min(len(c) for c in cams.values()) >= 3  # min(3, num_cameras)
  # One query per (id, camera) at most, and each has a gallery image of the
  # same id in another camera.
  pairs = list(zip(ds.query.pids.tolist(), ds.query.camids.tolist()))
  assert len(pairs) == len(set(pairs))
  for pid, cam in pairs:
    same = ds.gallery.pids == pid
    assert np.any(same & (ds.gallery.camids != cam)), (pid, cam)


def test_images_decode_to_requested_size(small):
  paths = []
  for d, _, names in os.walk(small):
    paths += [os.path.join(d, n) for n in names if n.endswith(".jpg")]
  total = SMALL["num_train_ids"] + SMALL["num_test_ids"]
  assert len(paths) == (total * SMALL["images_per_id"] +
                        SMALL["num_distractors"] + SMALL["num_junk"])
  for p in paths:
    with Image.open(p) as im:
      assert im.format == "JPEG" and im.mode == "RGB"
      assert im.size == (48, 96)  # PIL: (width, height).


def test_deterministic_by_seed(small, tmp_path):
  again = synthetic.write_synthetic_market(str(tmp_path / "a"), seed=3, **SMALL)
  other = synthetic.write_synthetic_market(str(tmp_path / "b"), seed=4, **SMALL)
  ref = _files(small)
  assert _files(again) == ref
  changed = _files(other)
  assert sorted(changed) != sorted(ref)  # Names (frames, pids) differ too.
  shared = set(changed) & set(ref) - {synthetic.MARKER_NAME}
  assert all(changed[k] != ref[k] for k in shared)


def test_idempotent_and_refuses_foreign_folders(small, tmp_path, monkeypatch):
  before = _files(small)

  def fail(*a, **k):
    raise AssertionError("must not rewrite a complete set")

  monkeypatch.setattr(synthetic, "_write", fail)
  assert synthetic.write_synthetic_market(small, seed=3, **SMALL) == small
  assert _files(small) == before

  with pytest.raises(ValueError, match="different parameters"):
    synthetic.write_synthetic_market(small, seed=4, **SMALL)

  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="Refusing"):
    synthetic.write_synthetic_market(str(foreign), **SMALL)
  assert (foreign / "notes.txt").read_text() == "mine"
  assert os.listdir(foreign) == ["notes.txt"]

  a_file = tmp_path / "file"
  a_file.write_text("x")
  with pytest.raises(ValueError, match="not a folder"):
    synthetic.write_synthetic_market(str(a_file), **SMALL)
  # No temporary folders are left behind by any of the refusals.
  assert sorted(os.listdir(tmp_path)) == ["file", "foreign"]


def test_empty_folder_is_filled(tmp_path):
  root = tmp_path / "empty"
  root.mkdir()
  kw = dict(SMALL, num_train_ids=1, num_test_ids=1, num_distractors=0,
            num_junk=0)
  synthetic.write_synthetic_market(str(root), **kw)
  ds = layouts.parse_market1501(str(root))
  assert (len(ds.train), len(ds.query) + len(ds.gallery)) == (8, 8)
  assert sorted(os.listdir(tmp_path)) == ["empty"]


def test_bad_parameters(tmp_path):
  with pytest.raises(ValueError, match="images_per_id"):
    synthetic.write_synthetic_market(str(tmp_path / "x"), images_per_id=5)
  with pytest.raises(ValueError, match="num_cameras"):
    synthetic.write_synthetic_market(str(tmp_path / "x"), num_cameras=10)
  assert not os.listdir(tmp_path)


def test_render_is_pure_and_identity_dependent():
  rng = np.random.default_rng(0)
  cam = synthetic.sample_camera(rng)
  a, b = synthetic.sample_identity(rng), synthetic.sample_identity(rng)
  view = dataclasses.replace(synthetic.sample_view(rng), occluder="none",
                             noise=0.02)
  img = synthetic.render(a, cam, view, (128, 64))
  assert img.shape == (128, 64, 3) and img.dtype == np.uint8
  np.testing.assert_array_equal(img, synthetic.render(a, cam, view, (128, 64)))
  other = synthetic.render(b, cam, view, (128, 64))
  # Same background and pose: only the person differs, the corners do not.
  assert np.abs(img.astype(int) - other).mean() > 5
  np.testing.assert_allclose(img[:4, :4].mean(), other[:4, :4].mean(), atol=4)
  assert synthetic.render(None, cam, view, (32, 16)).shape == (32, 16, 3)


def test_raw_pixels_are_a_weak_descriptor(tmp_path):
  """Raw-pixel mAP stays low while a crude colour descriptor does far better.

  The first bound makes the nuisances matter; the second guards against a
  generator so noisy that identity is gone altogether.
  """
  root = synthetic.write_synthetic_market(
      str(tmp_path / "m"), num_train_ids=1, num_test_ids=40, num_cameras=6,
      images_per_id=12, num_distractors=40, num_junk=0, seed=1)
  ds = layouts.parse_market1501(root)

  def load(split):
    return np.stack([np.asarray(Image.open(p), np.float32) / 255.0
                     for p in split.paths])

  q, g = load(ds.query), load(ds.gallery)
  qf, gf = q.reshape(len(q), -1), g.reshape(len(g), -1)
  dist = ((qf ** 2).sum(1)[:, None] + (gf ** 2).sum(1)[None]
          - 2.0 * qf @ gf.T)
  args = (ds.query.pids, ds.gallery.pids, ds.query.camids, ds.gallery.camids)
  raw_map, raw_r1 = _map_rank1(dist, *args)
  assert raw_map <= 0.30, raw_map

  def colour_hist(x):
    # Joint 4x4x4 RGB histograms of 4 horizontal bands of the central columns.
    c = np.minimum((x[:, :, 16:48] * 4).astype(int), 3)
    idx = c[..., 0] * 16 + c[..., 1] * 4 + c[..., 2]
    bands = np.array_split(idx, 4, axis=1)
    h = np.concatenate(
        [np.stack([np.bincount(b.ravel(), minlength=64) for b in band])
         for band in bands], axis=1)
    h = np.sqrt(h.astype(np.float32))
    return h / np.linalg.norm(h, axis=1, keepdims=True)

  hq, hg = colour_hist(q), colour_hist(g)
  hist_map, _ = _map_rank1(-hq @ hg.T, *args)
  assert hist_map >= 3 * raw_map and hist_map >= 0.12, (hist_map, raw_map)


def test_few_images_per_id_spread_over_fewer_cameras(tmp_path):
  """images_per_id = 6 with 6 cameras: each id is seen in exactly 3 cameras
  (two images each), instead of failing to draw a camera count."""
  root = str(tmp_path / "few")
  synthetic.write_synthetic_market(root, num_train_ids=3, num_test_ids=2, num_cameras=6,
                                   images_per_id=6, num_distractors=0, num_junk=0,
                                   image_size=(32, 16))
  ds = layouts.parse_market1501(root)
  per_id = collections.defaultdict(list)
  for p in ds.train.paths + ds.query.paths + ds.gallery.paths:
    pid, cam = _name_fields(p)
    per_id[pid].append(cam)
  assert len(per_id) == 5
  for cams in per_id.values():
    assert sorted(collections.Counter(cams).values()) == [2, 2, 2]
