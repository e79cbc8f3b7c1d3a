"""Tests for reidjax.viz: metrics JSON, CMC PNG and ranked-list PNG.

On the synthetic Market-1501 set; pixel features (downsampled images) give a
ranking with both true and false matches near the top. Frames are checked at
positions recomputed from the documented layout, against labels computed here.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from reidjax.data import layouts, synthetic
from reidjax.evaluate import distance, metrics, video
from reidjax.viz import report

CELL = (64, 32)
TOP_K = 6


@pytest.fixture(scope="module")
def market(tmp_path_factory):
  root = tmp_path_factory.mktemp("viz") / "market"
  synthetic.write_synthetic_market(
      str(root), num_train_ids=4, num_test_ids=6, images_per_id=12,
      num_distractors=5, num_junk=2)
  return layouts.parse_market1501(str(root))


def pixel_features(paths, size=(16, 8)):
  return np.stack([np.asarray(Image.open(p).convert("RGB").resize(
      (size[1], size[0])), np.float32).reshape(-1) / 255.0 for p in paths])


@pytest.fixture(scope="module")
def ranked(market):
  q, g = market.query, market.gallery
  dist = np.asarray(distance.pairwise_distance(
      pixel_features(q.paths), pixel_features(g.paths)))
  return dist, metrics.evaluate_ranking(dist, q.pids, g.pids, q.camids,
                                        g.camids, max_rank=20)


def frame_color(image, row, col):
  """Colour in the middle of the frame's left border of a cell."""
  x, y = report.cell_origin(row, col, CELL)
  return image.getpixel((x + report.FRAME // 2, y + CELL[0] // 2 + 4))


def test_metrics_json(ranked, tmp_path):
  _, result = ranked
  path = tmp_path / "out" / "metrics.json"
  written = report.write_metrics_json(result, str(path), protocol="market1501")
  loaded = json.loads(path.read_text())
  assert loaded == json.loads(json.dumps(written))
  assert loaded["protocol"] == "market1501"
  assert loaded["cmc"] == pytest.approx(result.cmc.tolist())
  assert loaded["mAP"] == pytest.approx(result.mAP)
  assert loaded["mINP"] == pytest.approx(result.mINP)
  assert loaded["num_queries"] == (result.num_valid_queries
                                   + result.num_skipped_queries)


def test_cmc_png(ranked, tmp_path):
  _, result = ranked
  curve = np.linspace(0.2, 1.0, 20)
  path = report.plot_cmc({"pixels": result, "line": curve},
                         str(tmp_path / "cmc.png"), size=(5, 4), dpi=80)
  image = Image.open(path)
  assert image.size == (400, 320)
  pixels = np.asarray(image.convert("RGB"))
  # Not blank: axes, grid and two coloured curves.
  assert (pixels.min(axis=2) < 100).mean() > 0.01
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10
  if os.environ.get("REIDJAX_KEEP_PNG"):
    image.save(os.path.join(os.environ["REIDJAX_KEEP_PNG"], "cmc.png"))


def test_ranked_list_png(market, ranked, tmp_path):
  dist, _ = ranked
  q, g = market.query, market.gallery
  chosen = [0, 3, len(q) - 1]
  path = str(tmp_path / "ranked.png")
  image = report.ranked_list_image(
      q.paths, g.paths, dist, q.pids, g.pids, q.camids, g.camids,
      query_indices=chosen, top_k=TOP_K, cell=CELL, path=path)
  assert Image.open(path).size == image.size
  h, w = CELL
  assert image.size == (
      2 * report.MARGIN + (TOP_K + 1) * (w + 2 * report.FRAME)
      + TOP_K * report.GAP + report.QUERY_GAP,
      2 * report.MARGIN + 3 * (h + 2 * report.FRAME + report.LABEL)
      + 2 * report.GAP)
  seen = set()
  for row, qi in enumerate(chosen):
    # Expected list, computed here: stable order, same pid+camera removed.
    order = np.argsort(dist[qi], kind="stable")
    order = [j for j in order
             if not (g.pids[j] == q.pids[qi] and g.camids[j] == q.camids[qi])]
    assert frame_color(image, row, 0) == report.QUERY_COLOR
    for col, j in enumerate(order[:TOP_K], start=1):
      expected = (report.MATCH_COLOR if g.pids[j] == q.pids[qi]
                  else report.MISS_COLOR)
      assert frame_color(image, row, col) == expected, (row, col)
      seen.add(expected)
      # The thumbnail is the gallery image, resized.
      x, y = report.cell_origin(row, col, CELL)
      thumb = np.asarray(image.crop((x + report.FRAME, y + report.FRAME,
                                     x + report.FRAME + w,
                                     y + report.FRAME + h)), np.float32)
      source = np.asarray(Image.open(g.paths[j]).convert("RGB").resize(
          (w, h), Image.BILINEAR), np.float32)
      np.testing.assert_allclose(thumb, source, atol=1)
  assert seen == {report.MATCH_COLOR, report.MISS_COLOR}  # Both kinds shown.
  if os.environ.get("REIDJAX_KEEP_PNG"):
    image.save(os.path.join(os.environ["REIDJAX_KEEP_PNG"], "ranked.png"))


def test_ranked_list_video_uses_first_frames(market, tmp_path):
  # Tracklets of 3 frames: first frame = the image of the index, then others.
  q, g = market.query, market.gallery
  g_tracks = [(g.paths[i], g.paths[(i + 1) % len(g)], g.paths[(i + 2) % len(g)])
              for i in range(len(g))]
  q_tracks = [(p, p) for p in q.paths]
  feats = video.aggregate_tracklets(
      pixel_features(q.paths), np.arange(len(q)))["features"]
  dist = np.asarray(distance.pairwise_distance(feats,
                                               pixel_features(g.paths)))
  image = report.ranked_list_image(
      q_tracks, g_tracks, dist[:1], q.pids, g.pids, q.camids, g.camids,
      query_indices=[0], top_k=3, cell=CELL)
  first = report.ranked_lists(dist[:1], q.pids[:1], g.pids, q.camids[:1],
                              g.camids, 3)[0][0]
  x, y = report.cell_origin(0, 1, CELL)
  thumb = np.asarray(image.crop((x + report.FRAME, y + report.FRAME,
                                 x + report.FRAME + CELL[1],
                                 y + report.FRAME + CELL[0])), np.float32)
  source = np.asarray(Image.open(g_tracks[first][0]).convert("RGB").resize(
      (CELL[1], CELL[0]), Image.BILINEAR), np.float32)
  np.testing.assert_allclose(thumb, source, atol=1)
