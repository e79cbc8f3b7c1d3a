"""Attention-Driven's figure (viz.attdriven): boxes where the part-box function puts
them, and map panels that are the model's own maps over its crops."""

import jax
import ml_collections
import numpy as np
from PIL import Image

from configs import attdriven as attdriven_config
from configs import common
from reidjax import models
from reidjax.data import keypoints as keypoints_lib
from reidjax.data import part_boxes
from reidjax.viz import attdriven as viz
from reidjax.viz import duatm as duatm_viz
from reidjax.viz import panels

IMAGE_SIZE = (64, 32)
CELL = (256, 128)  # 64 x 32 enlarged x4 to MIN_CELL_WIDTH wide


def _panel(canvas, row, col, cell=CELL):
  x, y = duatm_viz.panel_origin(row, col, cell)
  x, y = x + duatm_viz.FRAME, y + duatm_viz.FRAME
  return canvas[y:y + cell[0], x:x + cell[1]]


def _pose():
  """A standing person in a 64 x 32 image (COCO-18 joints, all confident)."""
  joints = {"nose": (16, 8), "neck": (16, 14), "right_shoulder": (11, 15),
            "left_shoulder": (21, 15), "right_elbow": (9, 22), "left_elbow": (23, 22),
            "right_wrist": (9, 28), "left_wrist": (23, 28), "right_hip": (13, 32),
            "left_hip": (19, 32), "right_knee": (13, 42), "left_knee": (19, 42),
            "right_ankle": (13, 52), "left_ankle": (19, 52), "right_eye": (15, 7),
            "left_eye": (17, 7), "right_ear": (14, 8), "left_ear": (18, 8)}
  kp = np.zeros((18, 3), np.float32)
  for name, (x, y) in joints.items():
    kp[keypoints_lib.joint_indices([name])[0]] = (x, y, 0.9)
  return kp


def _data_config():
  d = ml_collections.ConfigDict(dict(height=32, width=16))
  d.parts = common.parts_config()
  d.parts.height, d.parts.width = 8, 16
  return d


def _tiny_model():
  config = attdriven_config.get_config("synthetic").model
  config.backbone.stage_widths = (2, 4, 4, 8)
  config.part_stage_widths = (2, 2, 4, 4)
  config.global_reduce, config.part_reduce = 8, 4
  model = models.build_model(config, num_classes=5)
  x = {"images": np.zeros((1, 32, 16, 3), np.float32),
       "parts": np.zeros((1, 4, 8, 16, 3), np.float32)}
  variables = model.init(jax.random.PRNGKey(0), x)
  # Non-uniform masks (the fuse kernels start at zero).
  params = jax.tree_util.tree_map_with_path(
      lambda path, v: (0.5 * jax.random.normal(jax.random.PRNGKey(3), v.shape)
                       if "fuse" in jax.tree_util.keystr(path) else v), variables["params"])
  return model, {**variables, "params": params}


def test_figure_boxes_and_maps_come_from_the_part_boxes_and_the_model(tmp_path):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, IMAGE_SIZE + (3,), dtype=np.uint8)
  keypoints = _pose()
  data = _data_config()
  model, variables = _tiny_model()
  path = tmp_path / "fig.png"
  figure = viz.part_attention_figure(model, variables, image, keypoints, data, str(path))
  assert Image.open(path).size == figure.size
  canvas = np.asarray(figure)
  # Boxes: the outline of R1..R4 at the pixels of part_boxes_np's boxes.
  boxes = part_boxes.part_boxes_np(keypoints, *IMAGE_SIZE,
                                   part_boxes.PartConfig.from_config(data.parts))
  panel = _panel(canvas, 0, 0)
  for k in range(1, 5):
    x1, y1, x2, y2 = viz.box_in_cell(boxes[k], IMAGE_SIZE, CELL)
    assert 0 < y1 < CELL[0] - 1, (k, y1)
    np.testing.assert_array_equal(panel[y1, (x1 + x2) // 2], viz.BOX_COLORS[k])
    # Just inside the line: the image, not the outline colour.
    assert tuple(panel[y1 + viz.BOX_LINE + 1, (x1 + x2) // 2]) != viz.BOX_COLORS[k]
  # Maps: each panel is overlay(crop, the model's map) for that branch and block.
  crops, inputs = viz.crops_and_inputs(image, boxes, data)
  maps = model.apply(variables, inputs, method="attention_maps")
  for row, branch in enumerate(viz.BRANCHES):
    crop = panels.resize(crops[row], CELL)  # pylint: disable=protected-access
    np.testing.assert_array_equal(_panel(canvas, row, 1), crop)
    for col, stage in zip((2, 3, 4), viz.STAGES):
      m = np.asarray(maps[branch][f"stage{stage}"][0])
      assert m.size == 1 or m.std() > 1e-4  # (1 x 1 maps are constant)
      expected = duatm_viz.overlay(crop, m.reshape(-1), m.shape)
      np.testing.assert_array_equal(_panel(canvas, row, col), expected)


def test_drawn_boxes_follow_hand_boxes_and_missing_blocks_stay_empty():
  gray = np.full(IMAGE_SIZE + (3,), 128, np.uint8)
  boxes = np.array([[1, 1, 31, 63], [4, 2, 28, 12], [4, 16, 28, 30], [4, 34, 28, 46],
                    [4, 50, 28, 62]], float)
  crops = [gray] + [np.full((16, 32, 3), 60, np.uint8)] * 4
  maps = {"global": {"stage4": np.eye(4, 2, dtype=np.float32)}}
  canvas = np.asarray(viz.draw_part_attention(gray, boxes, crops, maps))
  panel = _panel(canvas, 0, 0)
  for k, box in enumerate(boxes):
    x1, y1, x2, y2 = viz.box_in_cell(box, IMAGE_SIZE, CELL)
    assert (x1, y1) == (int(box[0] * 4), int(box[1] * 4))
    np.testing.assert_array_equal(panel[(y1 + y2) // 2, x2], viz.BOX_COLORS[k])
  # Only the global branch's Block 4 has a map: its panel is drawn, the others are
  # background.
  np.testing.assert_array_equal(
      _panel(canvas, 0, 4), duatm_viz.overlay(gray.repeat(4, 0).repeat(4, 1),
                                              maps["global"]["stage4"].reshape(-1), (4, 2)))
  background = np.asarray(viz.BACKGROUND)
  assert (_panel(canvas, 0, 2) == background).all()
  assert (_panel(canvas, 3, 3) == background).all()
