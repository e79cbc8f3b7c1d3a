"""FGRA's Fig. 5 (viz.fgra): the region boxes and the brightest cell of every
response panel, checked at pixels recomputed from the documented layout, and
the figure from a tiny FGRA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import fgra as fgra_config
from reidjax import models
from reidjax.viz import duatm as duatm_viz
from reidjax.viz import fgra as fgra_viz

SIZE = (64, 32)
CELL = (256, 128)  # 64 x 32 enlarged x4 to MIN_CELL_WIDTH wide
GRID = (4, 2)  # the tiny ResNet's last map at 64 x 32 (last stride 1)


def _panel(canvas, row, col, cell=CELL):
  x, y = duatm_viz.panel_origin(row, col, cell)
  x, y = x + duatm_viz.FRAME, y + duatm_viz.FRAME
  return canvas[y:y + cell[0], x:x + cell[1]]


def _cell_brightness(panel, grid):
  out = []
  for s in range(grid[0] * grid[1]):
    x0, y0, x1, y1 = duatm_viz.position_box(s, grid, panel.shape[:2])
    out.append(panel[y0:y1, x0:x1].astype(float).sum(axis=-1).mean())
  return np.array(out)


def test_region_boxes_and_brightest_response_cells(tmp_path):
  frames = np.full((3,) + SIZE + (3,), 128, np.uint8)
  num_regions = 4
  rng = np.random.default_rng(0)
  peaks = rng.integers(0, GRID[0] * GRID[1], (num_regions, 3))  # region i, frame n
  responses = np.full((num_regions, 3) + GRID, 0.1, np.float32)
  for i in range(num_regions):
    for n in range(3):
      responses[i, n].reshape(-1)[peaks[i, n]] = 1.0
  path = tmp_path / "fig" / "regions.png"
  image = fgra_viz.draw_region_responses(frames, responses, np.full((4, 3), 1 / 3),
                                         path=str(path))
  assert Image.open(path).size == image.size
  canvas = np.asarray(image)
  for i in range(num_regions):
    # The red outline of region i spans exactly its stripe's rows: map rows
    # [i, i + 1) of 4, i.e. panel rows [64 i, 64 (i + 1)).
    reference = _panel(canvas, i, 0)
    red = np.all(reference == fgra_viz.BOX_COLOR, axis=-1)
    rows = np.nonzero(red.any(axis=1))[0]
    assert (rows.min(), rows.max()) == (64 * i, 64 * (i + 1) - 1)
    assert fgra_viz.region_box(i, num_regions, GRID[0], CELL) == (0, 64 * i, 128, 64 * (i + 1))
    for n in range(3):
      bright = _cell_brightness(_panel(canvas, i, 1 + n), GRID)
      assert int(np.argmax(bright)) == peaks[i, n], (i, n)
  # Regions not dividing the map height: adaptive bounds (rows [0,2), [1,3), [2,4) of 4).
  assert [fgra_viz.region_box(i, 3, 4, (64, 32))[1:4:2] for i in range(3)] == [
      (0, 32), (16, 48), (32, 64)]


def test_bad_inputs_are_clear_errors():
  frames = np.zeros((2,) + SIZE + (3,), np.uint8)
  with pytest.raises(ValueError, match=r"\(R, T, h, w\) with T = 2"):
    fgra_viz.draw_region_responses(frames, np.ones((4, 3) + GRID))
  with pytest.raises(ValueError, match="uint8"):
    fgra_viz.draw_region_responses(frames / 255.0, np.ones((4, 2) + GRID))
  with pytest.raises(ValueError, match="non-negative"):
    fgra_viz.draw_region_responses(frames, -np.ones((4, 2) + GRID))


def test_figure_from_a_tiny_fgra(tmp_path):
  config = fgra_config.get_config("synthetic_video").model
  config.backbone.width = 4
  config.reduced_features = 8
  model = models.build_model(config, num_classes=3)
  clip = np.random.default_rng(1).integers(0, 256, (4,) + SIZE + (3,), np.uint8)
  variables = model.init(jax.random.PRNGKey(0), {"images": jnp.zeros((1, 4) + SIZE + (3,))})
  responses, weights = fgra_viz.region_responses(model, variables, clip)
  assert responses.shape == (4, 4) + GRID and weights.shape == (4, 4)
  assert responses.min() >= 0
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)  # softmax over frames
  image = fgra_viz.region_alignment_figure(model, variables, clip, str(tmp_path / "f.png"))
  assert image.size[0] >= duatm_viz.panel_origin(0, 5, CELL)[0]
  config.region_alignment, config.temporal_aggregation = False, "average"
  plain = models.build_model(config, num_classes=3)
  with pytest.raises(ValueError, match="no region alignment"):
    fgra_viz.region_responses(plain, variables, clip)
