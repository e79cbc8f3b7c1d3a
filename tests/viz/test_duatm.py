"""Tests for DuATM's attention maps (layers.dual_attention.attention_weights)
and their drawing (viz.duatm): the weights against an independent NumPy
float64 computation on the valid part of each sequence, panels checked at
pixels recomputed from the documented layout, and the pair figure end to end
on a tiny DuATM."""

import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from reidjax import models
from reidjax.inference import normalize_images
from reidjax.layers import dual_attention
from reidjax import checkpoint
from reidjax.viz import duatm as duatm_viz
from tests.layers import duatm_reference as ref

DIM = 6
GRID = (4, 2)
IMAGE_SIZE = (64, 32)  # enlarged x4 to the default 256 x 128 cell
CELL = (256, 128)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module", params=[True, False], ids=["intra", "no_intra"])
def prepared(request):
  """Two padded tiles prepared by the layer, and its parameters."""
  intra = request.param
  rng = np.random.default_rng(0)
  # Tile a: 2 sequences of length 5 (the second with 3 valid positions);
  # tile b: 3 sequences of length 4 (the last with 2 valid); padding is NaN.
  x_a = _unit(rng.normal(size=(2, 5, DIM))).astype(np.float32)
  x_b = _unit(rng.normal(size=(3, 4, DIM))).astype(np.float32)
  mask_a = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0]], bool)
  mask_b = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [0, 1, 0, 1]], bool)
  x_a[~mask_a], x_b[~mask_b] = np.nan, np.nan
  layer = dual_attention.DualAttention(intra=intra)
  variables = layer.init(jax.random.PRNGKey(0), x_a, mask_a,
                         method=layer.prepare)
  params = jax.tree.map(np.asarray, variables["params"])
  # Larger weights than the init's, so the softmaxes are far from uniform.
  params["transform"]["kernel"] = 3.0 * rng.normal(size=(DIM, DIM))
  params["transform"]["bias"] = 0.5 * rng.normal(size=DIM)
  stats = {"mean": 0.2 * rng.normal(size=DIM), "var": 1.0 + rng.random(DIM)}
  variables = {"params": params, "batch_stats": {"norm": stats}}
  prep = lambda x, m: layer.apply(variables, x, m, method=layer.prepare)
  return dict(intra=intra, layer=layer, variables=variables, params=params,
              stats=stats, items_a=prep(x_a, mask_a), items_b=prep(x_b, mask_b),
              x_a=x_a, x_b=x_b, mask_a=mask_a, mask_b=mask_b)


def _softmax_rows(logits):
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def _numpy_side(x, q, x_other, intra):
  """Valid parts only: intra (S, S), inter (S, S'), d (S,) of Eq. 2-4."""
  intra_w = _softmax_rows(q @ x.T) if intra else np.eye(len(x))
  inter_w = _softmax_rows(q @ x_other.T)
  x_bar = intra_w @ x
  d = np.linalg.norm(x_bar - inter_w @ x_other, axis=1)
  return intra_w, inter_w, d


@pytest.mark.parametrize("index_a,index_b", [(0, 0), (1, 2), (1, 1)])
def test_attention_weights_match_numpy(prepared, index_a, index_b):
  p = prepared
  got = jax.tree.map(np.asarray, dual_attention.attention_weights(
      p["items_a"], p["items_b"], index_a, index_b, intra=p["intra"]))
  m_a, m_b = p["mask_a"][index_a], p["mask_b"][index_b]
  xa = ref.unpad(p["x_a"], p["mask_a"])[index_a]
  xb = ref.unpad(p["x_b"], p["mask_b"])[index_b]
  qa = ref.transform(xa, p["params"], p["stats"]["mean"], p["stats"]["var"])
  qb = ref.transform(xb, p["params"], p["stats"]["mean"], p["stats"]["var"])
  intra_a, inter_a, d_a = _numpy_side(xa, qa, xb, p["intra"])
  intra_b, inter_b, d_b = _numpy_side(xb, qb, xa, p["intra"])

  assert got["intra_a"].shape == (5, 5) and got["inter_a"].shape == (5, 4)
  assert got["intra_b"].shape == (4, 4) and got["inter_b"].shape == (4, 5)
  np.testing.assert_array_equal(got["mask_a"], m_a)
  np.testing.assert_array_equal(got["mask_b"], m_b)
  for key, rows, cols, want in [("intra_a", m_a, m_a, intra_a),
                                ("inter_a", m_a, m_b, inter_a),
                                ("intra_b", m_b, m_b, intra_b),
                                ("inter_b", m_b, m_a, inter_b)]:
    w = got[key]
    np.testing.assert_allclose(w[np.ix_(rows, cols)], want, rtol=1e-5,
                               atol=1e-7, err_msg=key)
    # Padded rows and columns are exactly 0; valid rows sum to 1.
    assert not w[~rows].any() and not w[:, ~cols].any(), key
    np.testing.assert_allclose(w[rows].sum(axis=1), 1.0, atol=1e-6)
  if p["intra"]:  # Not the identity: the test would not see a swap.
    assert intra_a.max() < 0.999
  assert min(d_a.min(), d_b.min()) > 0.05  # far above round-off
  np.testing.assert_allclose(got["d_a"][m_a], d_a, rtol=1e-5)
  np.testing.assert_allclose(got["d_b"][m_b], d_b, rtol=1e-5)
  assert not got["d_a"][~m_a].any() and not got["d_b"][~m_b].any()
  # Eq. 5 from the local distances is the layer's (expanded) pair distance.
  expected = d_a.mean() / 2 + d_b.mean() / 2
  assert float(got["distance"]) == pytest.approx(expected, rel=1e-5)
  tile = np.asarray(dual_attention.pair_distance(p["items_a"], p["items_b"]))
  assert tile[index_a, index_b] == pytest.approx(
      got["d_a"][m_a].mean() / 2 + got["d_b"][m_b].mean() / 2, rel=1e-5)
  assert expected > 0.1  # far above the expansion's round-off


def _hand_weights(num_a, num_b, peaks_intra, peaks_inter, d_a):
  """Weights peaked at given positions (rows i: peak + small uniform)."""
  intra = np.full((num_a, num_a), 0.02)
  inter = np.full((num_a, num_b), 0.01)
  intra[np.arange(num_a), peaks_intra] = 0.5
  inter[np.arange(num_a), peaks_inter] = 0.3
  return {"intra_a": intra, "inter_a": inter, "d_a": np.asarray(d_a),
          "mask_a": np.ones(num_a, bool), "distance": np.float32(0.25)}


def _cell_brightness(panel, grid):
  """Mean luminance of every position's box in a (H, W, 3) panel."""
  lum = panel.astype(np.float64).mean(axis=2)
  out = []
  for s in range(grid[0] * grid[1]):
    x0, y0, x1, y1 = duatm_viz.position_box(s, grid, panel.shape[:2])
    out.append(lum[y0:y1, x0:x1].mean())
  return np.array(out)


def _panel(canvas, row, col, cell=CELL):
  x, y = duatm_viz.panel_origin(row, col, cell)
  x, y = x + duatm_viz.FRAME, y + duatm_viz.FRAME
  return canvas[y:y + cell[0], x:x + cell[1]]


def test_position_boxes_tile_the_image():
  covered = np.zeros((10, 7), int)  # sizes that do not divide evenly
  for s in range(6):
    x0, y0, x1, y1 = duatm_viz.position_box(s, (3, 2), (10, 7))
    covered[y0:y1, x0:x1] += 1
  assert (covered == 1).all()
  assert duatm_viz.position_box(5, (3, 2), (10, 7)) == (4, 7, 7, 10)
  # The nearest-upsampled map holds position s's weight over its box.
  hm = duatm_viz.heatmap(np.arange(6.0), (3, 2), (10, 7))
  assert hm[7, 4] == 5 and hm[5, 1] == 2 and hm[3, 3] == 0


def test_draw_image_pair_layout_and_brightest_cell(tmp_path):
  gray = np.full(IMAGE_SIZE + (3,), 128, np.uint8)
  peaks_intra = np.array([5, 0, 3, 7, 2, 6, 1, 4])
  peaks_inter = np.array([2, 7, 0, 1, 6, 3, 5, 4])
  d_a = np.array([0.5, 0.9, 0.1, 0.3, 0.8, 0.2, 0.6, 0.05])
  weights = _hand_weights(8, 8, peaks_intra, peaks_inter, d_a)
  path = tmp_path / "out" / "pair.png"
  image = duatm_viz.draw_pair_attention(gray, gray, weights, GRID,
                                        path=str(path))
  # 3 largest d (1, 4, 6) then 3 smallest (7, 2, 5) rows of 3 panels:
  # width 6 + 3 * (128 + 8 + 4) - 4 + 6, height 6 + 14 + 6 * (14 + 264 + 4) - 4 + 6.
  assert image.size == (428, 1714)
  assert Image.open(path).size == (428, 1714)
  canvas = np.asarray(image)
  for row, position in enumerate([1, 4, 6, 7, 2, 5]):
    # Col 0: the gray image with position's box outlined.
    x0, y0, x1, y1 = duatm_viz.position_box(position, GRID, CELL)
    a = _panel(canvas, row, 0)
    assert tuple(a[(y0 + y1) // 2, x0]) == duatm_viz.OUTLINE_COLOR
    assert tuple(a[(y0 + y1) // 2, (x0 + x1) // 2]) == (128, 128, 128)
    others = [s for s in range(8) if s != position]
    for s in others:  # no other box is outlined (its centre-left pixel).
      bx0, by0, _, by1 = duatm_viz.position_box(s, GRID, CELL)
      if bx0 != x0 or not y0 <= (by0 + by1) // 2 < y1:
        assert tuple(a[(by0 + by1) // 2, bx0 + 3]) == (128, 128, 128)
    for col, peaks in ((1, peaks_intra), (2, peaks_inter)):
      bright = _cell_brightness(_panel(canvas, row, col), GRID)
      assert bright.argmax() == peaks[position], (row, col)
      # Every other cell has the same (small) weight, so the same colour.
      assert np.ptp(np.delete(bright, peaks[position])) < 1e-9


def test_draw_chosen_positions_and_bad_input():
  gray = np.full(IMAGE_SIZE + (3,), 90, np.uint8)
  weights = _hand_weights(8, 8, np.arange(8), np.arange(8)[::-1],
                          np.linspace(0, 1, 8))
  image = duatm_viz.draw_pair_attention(gray, gray, weights, GRID,
                                        positions=[3], cell=(64, 32))
  # Three 32-wide panels (140 px) are narrower than the title: widened.
  assert image.size[0] > 6 + 3 * 44 - 4 + 6
  assert image.size[1] == 6 + 14 + 14 + 64 + 8 + 4 - 4 + 6
  bright = _cell_brightness(_panel(np.asarray(image), 0, 2, (64, 32)), GRID)
  assert bright.argmax() == 4
  # A header longer than the panels widens the canvas, never clips it.
  noted = duatm_viz.draw_pair_attention(gray, gray, weights, GRID,
                                        positions=[3], cell=(64, 32),
                                        note="x" * 60)
  assert noted.size[0] > image.size[0] and noted.size[1] == image.size[1]
  dark = (np.asarray(noted).min(axis=2) < 60)[:duatm_viz.MARGIN + 12]
  assert dark[:, image.size[0]:].any()  # text beyond the old width
  with pytest.raises(ValueError, match="position 8"):
    duatm_viz.draw_pair_attention(gray, gray, weights, GRID, positions=[8])
  narrow = dict(weights, inter_a=weights["inter_a"][:, :6])
  with pytest.raises(ValueError, match=r"inter_a.*\(8, 6\).*\(8, 8\)"):
    duatm_viz.draw_pair_attention(gray, gray, narrow, GRID)
  with pytest.raises(ValueError, match=r"grid.*\(h, w\)"):
    duatm_viz.draw_pair_attention(gray, gray, weights, None)
  with pytest.raises(ValueError, match="uint8"):
    duatm_viz.draw_pair_attention(gray / 255.0, gray, weights, GRID)
  with pytest.raises(ValueError, match="has shape"):
    duatm_viz.draw_pair_attention(gray, gray, weights, (2, 2))


def test_draw_video_pair_bars():
  clip_a = np.full((3,) + IMAGE_SIZE + (3,), 100, np.uint8)
  clip_b = np.full((5,) + IMAGE_SIZE + (3,), 100, np.uint8)
  intra = np.array([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
  inter = np.array([[0.1, 0.4, 0.2, 0.2, 0.1], [0.5, 0.1, 0.1, 0.1, 0.2],
                    [0.0, 0.0, 0.0, 0.0, 1.0]])
  weights = {"intra_a": intra, "inter_a": inter, "d_a": np.array([0.3, 0.1, 0.2]),
             "mask_a": np.ones(3, bool)}
  image = duatm_viz.draw_pair_attention(clip_a, clip_b, weights, None)
  canvas = np.asarray(image)
  cell = (128, 64)  # 64 x 32 frames enlarged x2 to MIN_FRAME_WIDTH
  drawn = [0, 2, 1]  # largest d (0, 2), then smallest (1)
  h, w = cell
  for row, position in enumerate(drawn):
    for clip_row, (values, count) in enumerate(((intra, 3), (inter, 5))):
      for k in range(count):
        x, y = duatm_viz.video_panel_origin(row, clip_row, k, cell)
        band = canvas[y + h + 2 * duatm_viz.FRAME:
                      y + h + 2 * duatm_viz.FRAME + duatm_viz.BAR,
                      x + duatm_viz.FRAME + w // 2]
        height = (band == duatm_viz.BAR_COLOR).all(axis=1).sum()
        v = values[position]
        assert height == round(duatm_viz.BAR * v[k] / v.max()), (row, k)
        frame_pixel = tuple(canvas[y + 1, x + 1])
        outlined = clip_row == 0 and k == position
        assert (frame_pixel == duatm_viz.OUTLINE_COLOR) == outlined
  with pytest.raises(ValueError, match="grid must be None"):
    duatm_viz.draw_pair_attention(clip_a, clip_b, weights, (3, 1))


def _tiny_duatm(video=False):
  config = ml_collections.ConfigDict(dict(
      name="duatm", dim=8, video=video, matching="full",
      backbone=dict(name="densenet121", growth_rate=4, block_config=(1, 1, 1, 1),
                    num_init_features=8)))
  return models.build_model(config, num_classes=3)


def _random_variables(model, input_shape, seed=0):
  """Variables of init's structure: He-scaled random kernels, small biases,
  identity BatchNorm, a 3x larger matcher transform (sharper attention).

  Tracing init only: its compilation dominates a tiny model's cost on CPU.
  """
  shapes = jax.eval_shape(
      model.init, jax.random.PRNGKey(0),
      {"images": jax.ShapeDtypeStruct(input_shape, np.float32)})
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    key = jax.tree_util.keystr(path)
    if key.endswith(("['var']", "['scale']")):
      return np.ones(leaf.shape, leaf.dtype)
    if key.endswith("['mean']"):
      return np.zeros(leaf.shape, leaf.dtype)
    if key.endswith("['kernel']"):
      gain = 3.0 if "matcher" in key else np.sqrt(2.0)
      std = gain / np.sqrt(np.prod(leaf.shape[:-1]))
      return (std * rng.normal(size=leaf.shape)).astype(leaf.dtype)
    return (0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _block_image(seed, blocks=(4, 2), size=32):
  """An image of uniformly coloured size x size blocks (distinct regions)."""
  colors = np.random.default_rng(seed).integers(0, 256, blocks + (3,))
  return np.kron(colors, np.ones((size, size, 1))).astype(np.uint8)


def test_pair_attention_figure_end_to_end(tmp_path):
  model = _tiny_duatm()
  image_a, image_b = _block_image(1), _block_image(2)  # 128 x 64
  variables = _random_variables(model, (1, 128, 64, 3))
  path = tmp_path / "pair.png"
  image = duatm_viz.pair_attention_figure(model, variables, image_a, image_b,
                                          str(path))
  # 128 x 64 -> a 4 x 2 map: S = 8, 6 rows of panels (as the hand layout).
  assert image.size == (428, 1714)
  assert Image.open(path).size == image.size
  # The same panels from the model's own inference path (embed, a batch).
  items = jax.jit(lambda v, x: model.apply(v, {"images": x}, method="embed"))(
      variables, normalize_images(np.stack([image_a, image_b]), 128, 64))
  items = dual_attention.SequenceItems(
      *(items[f] for f in dual_attention.SequenceItems._fields))
  weights = jax.tree.map(np.asarray,
                         dual_attention.attention_weights(items, items, 0, 1))
  assert float(weights["distance"]) == pytest.approx(
      float(dual_attention.pair_distance(items)[0, 1]), rel=1e-5)
  assert float(weights["distance"]) > 0.05  # not round-off
  assert len(np.unique(weights["d_a"])) == 8  # no ties: a definite order
  expected = duatm_viz.draw_pair_attention(image_a, image_b, weights, (4, 2))
  for row in range(6):
    for col in range(3):
      np.testing.assert_allclose(
          _panel(np.asarray(image), row, col).astype(float),
          _panel(np.asarray(expected), row, col).astype(float), atol=2)
  with pytest.raises(ValueError, match="image model"):
    duatm_viz.pair_attention_figure(model, variables, image_a[None], image_b,
                                    None)


def test_pair_attention_figure_video_clips_of_different_lengths():
  model = _tiny_duatm(video=True)
  variables = _random_variables(model, (1, 3, 64, 32, 3))
  clip_a = np.stack([_block_image(s, (2, 1)) for s in range(3)])  # 3 x 64 x 32
  clip_b = np.stack([_block_image(s, (2, 1)) for s in range(5, 7)])
  image = duatm_viz.pair_attention_figure(model, variables, clip_a, clip_b,
                                          None)
  embed = jax.jit(lambda v, x: model.apply(v, {"images": x}, method="embed"))
  x_a = embed(variables, normalize_images(clip_a, 64, 32)[None])
  x_b = embed(variables, normalize_images(clip_b, 64, 32)[None])
  pick = lambda items: dual_attention.SequenceItems(
      *(items[f] for f in dual_attention.SequenceItems._fields))
  weights = dual_attention.attention_weights(pick(x_a), pick(x_b), 0, 0)
  assert weights["inter_a"].shape == (3, 2)
  expected = duatm_viz.draw_pair_attention(clip_a, clip_b, weights, None)
  # 3 drawn frames of a (2 largest d, 1 smallest), 64 x 32 frames enlarged
  # to 128 x 64, each row title 14 + 2 x (frame 128 + 8, bar 24, gap 4) + 4:
  # 6 + 14 + 3 * 346 - 4 (no last gaps) - 4 + 6.
  assert image.size == expected.size == (duatm_viz.MIN_VIDEO_WIDTH, 1056)
  np.testing.assert_allclose(np.asarray(image, float),
                             np.asarray(expected, float), atol=2)


def test_cli_restores_a_workdir_and_writes_the_figure(tmp_path):
  config = ml_collections.ConfigDict(dict(
      data=dict(height=128, width=64, video=False),
      model=dict(name="duatm", num_classes=3, dtype="float32", dim=8,
                 video=False, matching="full",
                 backbone=dict(name="densenet121", growth_rate=4,
                               block_config=(1, 1, 1, 1),
                               num_init_features=8))))
  model = models.build_model(config.model, 3)
  variables = _random_variables(model, (1, 128, 64, 3))
  workdir = tmp_path / "run"
  ckpt = checkpoint.Checkpointer(str(workdir), save_every_steps=1)
  ckpt.save(7, {"params": variables["params"],
                "batch_stats": variables["batch_stats"]}, config, force=True)
  ckpt.wait()
  ckpt.close()
  paths = []
  for seed in (1, 2):  # 64 x 32 files: the CLI resizes them to 128 x 64.
    paths.append(str(tmp_path / f"{seed}.png"))
    Image.fromarray(_block_image(seed, size=16)).save(paths[-1])
  out = str(tmp_path / "fig" / "pair.png")
  assert duatm_viz.main(["--workdir", str(workdir), "--query", paths[0],
                         "--gallery", paths[1], "--out", out,
                         "--positions", "0", "5"]) == out
  image = np.asarray(Image.open(out))
  assert image.shape == (6 + 14 + 2 * 282 - 4 + 6, 428, 3)
  load = lambda p: np.asarray(Image.open(p).resize((64, 128), Image.BILINEAR))
  expected = duatm_viz.pair_attention_figure(
      model, variables, load(paths[0]), load(paths[1]), None, positions=[0, 5])
  for row in range(2):
    for col in range(3):
      np.testing.assert_allclose(_panel(image, row, col).astype(float),
                                 _panel(np.asarray(expected), row, col)
                                 .astype(float), atol=2)
  with pytest.raises(ValueError, match="one image"):
    duatm_viz.main(["--workdir", str(workdir), "--query", *paths,
                    "--gallery", paths[1], "--out", out])
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    duatm_viz.main(["--workdir", str(tmp_path / "none"), "--query", paths[0],
                    "--gallery", paths[1], "--out", out])


def test_module_is_exported_and_runs_as_a_command_without_double_import():
  import reidjax.viz  # pylint: disable=g-import-not-at-top
  assert reidjax.viz.pair_attention_figure is duatm_viz.pair_attention_figure
  assert reidjax.viz.draw_pair_attention is duatm_viz.draw_pair_attention
  # Importing reidjax.viz must not load the figure module before runpy runs it
  # as __main__ (a RuntimeWarning, here an error).
  result = subprocess.run(
      [sys.executable, "-W", "error::RuntimeWarning", "-m", "reidjax.viz.duatm",
       "--help"], capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert "usage: python -m reidjax.viz.duatm" in result.stdout
