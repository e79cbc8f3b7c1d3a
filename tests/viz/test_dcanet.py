"""DCANet's Fig. 3 (viz.dcanet): panels checked at pixels recomputed from the
documented layout, and the figure end to end on a tiny trained DCANet and
from a restored workdir by the CLI."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from PIL import Image

from reidjax import models
from reidjax.inference import normalize_images
from reidjax.models import dcanet
from reidjax import checkpoint
from reidjax.viz import dcanet as dcanet_viz
from reidjax.viz import duatm as duatm_viz

IMAGE_SIZE = (64, 32)
CELL = (256, 128)  # 64 x 32 enlarged x4 to MIN_CELL_WIDTH wide
GRID = (4, 2)  # the tiny ResNet's stage-3 map at 64 x 32
K = 4


def _panel(canvas, row, col, cell=CELL):
  x, y = duatm_viz.panel_origin(row, col, cell)
  x, y = x + duatm_viz.FRAME, y + duatm_viz.FRAME
  return canvas[y:y + cell[0], x:x + cell[1]]


def _cell_brightness(panel, grid):
  """Mean brightness of every map cell's pixel box (row-major)."""
  out = []
  for s in range(grid[0] * grid[1]):
    x0, y0, x1, y1 = duatm_viz.position_box(s, grid, panel.shape[:2])
    out.append(panel[y0:y1, x0:x1].astype(float).sum(axis=-1).mean())
  return np.array(out)


def _hand_maps(peaks, grid=GRID):
  maps = np.full((len(peaks),) + grid, 0.05, np.float32)
  for k, p in enumerate(peaks):
    maps[k].reshape(-1)[p] = 0.5
  return maps / maps.sum(axis=(1, 2), keepdims=True)


def test_layout_and_brightest_cell_of_each_map(tmp_path):
  gray = np.full(IMAGE_SIZE + (3,), 128, np.uint8)
  peaks = [5, 0, 3, 7]
  maps = _hand_maps(peaks)
  path = tmp_path / "out" / "maps.png"
  image = dcanet_viz.draw_attention_maps(gray, maps, path=str(path))
  # One row: image + 4 maps, panels 128 + 2 * 4 wide with gaps of 4:
  # width 6 + 5 * 140 - 4 + 6; height 6 + 14 + 14 + 256 + 8 + 6.
  assert image.size == (708, 304)
  assert Image.open(path).size == image.size
  canvas = np.asarray(image)
  assert (_panel(canvas, 0, 0) == 128).all()  # the input, enlarged
  for k, peak in enumerate(peaks):
    bright = _cell_brightness(_panel(canvas, *dcanet_viz.map_panel(k)), GRID)
    assert bright.argmax() == peak, k
    # Every other cell has the same (small) score, so the same colour.
    assert np.ptp(np.delete(bright, peak)) < 1e-9
    # The title strip above the panel holds text (its max score).
    x, y = duatm_viz.panel_origin(0, 1 + k, CELL)
    assert (canvas[y - duatm_viz.TITLE:y, x:x + 60].min(axis=-1) < 80).any()
  # Wrapped rows: 8 maps, 3 per row -> 3 rows, maps under each other from col 1.
  wrapped = dcanet_viz.draw_attention_maps(gray, _hand_maps(list(range(8))), columns=3,
                                           cell=(64, 32))
  assert dcanet_viz.map_panel(7, 3) == (2, 2)
  assert wrapped.size[1] == 6 + 14 + 3 * (14 + 64 + 8 + 4) - 4 + 6
  bright = _cell_brightness(_panel(np.asarray(wrapped), 2, 2, (64, 32)), GRID)
  assert bright.argmax() == 7
  # Empty column 0 of later rows is background.
  assert (_panel(np.asarray(wrapped), 1, 0, (64, 32)) == 255).all()


def test_bad_inputs_are_clear_errors():
  gray = np.full(IMAGE_SIZE + (3,), 128, np.uint8)
  with pytest.raises(ValueError, match="uint8"):
    dcanet_viz.draw_attention_maps(gray / 255.0, _hand_maps([0]))
  with pytest.raises(ValueError, match=r"\(K, h, w\)"):
    dcanet_viz.draw_attention_maps(gray, np.ones((4, 2)))


def _tiny_config(num_classes=4):
  return ml_collections.ConfigDict(dict(
      name="dcanet", dtype="float32", num_classes=num_classes, video=False,
      dcam_stages=(3,), num_blocks=K, spatial_reduction=4, channel_reduction=2,
      backbone=dict(name="resnet50", stage_sizes=(1, 1, 1, 1), width=4, last_stride=1)))


def _block_image(seed, blocks=(4, 2), size=16):
  colors = np.random.default_rng(seed).integers(0, 256, blocks + (3,))
  return np.kron(colors, np.ones((size, size, 1))).astype(np.uint8)


@pytest.fixture(name="trained", scope="module")
def _trained():
  """A tiny DCANet trained 40 Adam steps on 4 identities of block images."""
  model = models.build_model(_tiny_config(), num_classes=4)
  pids = np.repeat(np.arange(4), 2)
  rng = np.random.default_rng(0)
  raw = np.stack([_block_image(int(p)) for p in pids]).astype(np.float32)
  images = normalize_images(np.clip(raw + rng.normal(0, 20, raw.shape), 0, 255)
                            .astype(np.uint8), *IMAGE_SIZE)
  batch = {"images": images, "pids": jnp.asarray(pids)}
  variables = model.init(jax.random.PRNGKey(0), {"images": images})
  loss_config = ml_collections.ConfigDict(dict(
      label_smoothing=0.0, triplet_margin=0.3, ce_weight=1.0, triplet_weight=1.0,
      discriminant_weight=0.5))
  tx = optax.adam(3e-3)
  opt_state = tx.init(variables["params"])

  @jax.jit
  def step(params, stats, opt_state):
    def loss_fn(p):
      out, updates = model.apply({"params": p, "batch_stats": stats}, {"images": images},
                                 train=True, mutable=["batch_stats"])
      loss, metrics = dcanet.dcanet_objective(out, batch, loss_config)
      return loss, (metrics, updates["batch_stats"])
    (_, (metrics, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, metrics

  params, stats = variables["params"], variables["batch_stats"]
  history = []
  for _ in range(40):
    params, stats, opt_state, metrics = step(params, stats, opt_state)
    history.append(jax.tree.map(float, metrics))
  return model, {"params": params, "batch_stats": stats}, history


def test_figure_of_a_tiny_trained_model(trained, tmp_path):
  model, variables, history = trained
  # It did train: both the whole loss and Eq. 5's term went down.
  assert history[-1]["loss"] < 0.7 * history[0]["loss"]
  assert history[-1]["discriminant"] < history[0]["discriminant"]
  image = _block_image(2)
  path = tmp_path / "fig.png"
  figure = dcanet_viz.attention_maps_figure(model, variables, image, str(path))
  assert Image.open(path).size == figure.size == (708, 304)
  # The maps the figure shows are the model's own A_sp,k (inference mode).
  maps = model.apply(variables, normalize_images(image[None], *IMAGE_SIZE),
                     method="dcam_outputs")["stage3"]["spatial_attention"][0]
  assert maps.shape == (K,) + GRID
  np.testing.assert_allclose(np.asarray(maps).sum(axis=(1, 2)), 1.0, rtol=1e-5)
  expected = dcanet_viz.draw_attention_maps(image, maps, note=f"stage 3, K = {K}")
  canvas, want = np.asarray(figure, float), np.asarray(expected, float)
  for k in range(K):
    np.testing.assert_allclose(_panel(canvas, *dcanet_viz.map_panel(k)),
                               _panel(want, *dcanet_viz.map_panel(k)), atol=2)
    # Brightest cell of panel k = block k's most attended position, when unique.
    flat = np.asarray(maps[k]).reshape(-1)
    if np.sort(flat)[-1] - np.sort(flat)[-2] > 1e-3:
      bright = _cell_brightness(_panel(np.asarray(figure), *dcanet_viz.map_panel(k)), GRID)
      assert bright.argmax() == flat.argmax(), k
  np.testing.assert_allclose(canvas, want, atol=2)
  with pytest.raises(ValueError, match="No DCAM after stage 2"):
    dcanet_viz.attention_maps_figure(model, variables, image, None, stage=2)


def test_cli_restores_a_workdir_and_writes_the_figure(trained, tmp_path):
  model, variables, _ = trained
  config = ml_collections.ConfigDict(dict(
      data=dict(height=64, width=32, video=False), model=_tiny_config()))
  workdir = tmp_path / "run"
  ckpt = checkpoint.Checkpointer(str(workdir), save_every_steps=1)
  ckpt.save(40, variables, config, force=True)
  ckpt.wait()
  ckpt.close()
  source = str(tmp_path / "x.png")  # 128 x 64: the CLI resizes it to 64 x 32
  Image.fromarray(_block_image(3, size=32)).save(source)
  out = str(tmp_path / "fig" / "maps.png")
  assert dcanet_viz.main(["--workdir", str(workdir), "--image", source, "--out", out]) == out
  drawn = np.asarray(Image.open(out), float)
  loaded = np.asarray(Image.open(source).resize((32, 64), Image.BILINEAR))
  expected = dcanet_viz.attention_maps_figure(model, variables, loaded, None)
  np.testing.assert_allclose(drawn, np.asarray(expected, float), atol=2)
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    dcanet_viz.main(["--workdir", str(tmp_path / "none"), "--image", source, "--out", out])
  with pytest.raises(FileNotFoundError, match="No image file"):
    dcanet_viz.main(["--workdir", str(workdir), "--image", source + ".missing", "--out", out])


def test_runs_as_a_command():
  result = subprocess.run(
      [sys.executable, "-W", "error::RuntimeWarning", "-m", "reidjax.viz.dcanet", "--help"],
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert "usage: python -m reidjax.viz.dcanet" in result.stdout
