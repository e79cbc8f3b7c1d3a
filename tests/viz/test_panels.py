"""The shared panel canvas (viz.panels): frames, pixels, titles and canvas sizes at
the positions of the documented layout, and the figure items."""

import numpy as np
import pytest
from PIL import Image

from reidjax.viz import panels
from reidjax.viz.report import BACKGROUND, FRAME, GAP, MARGIN

CELL = (20, 10)


def test_panel_origin_is_the_documented_formula():
  h, w = CELL
  for row, col in ((0, 0), (2, 3)):
    assert panels.panel_origin(row, col, CELL) == (
        MARGIN + col * (w + 2 * FRAME + GAP),
        MARGIN + panels.HEADER + row * (panels.TITLE + h + 2 * FRAME + GAP) + panels.TITLE)
  # A canvas of 2 x 3 panels ends MARGIN after the last frame.
  width, height = panels.grid_size(2, 3, CELL)
  x, y = panels.panel_origin(1, 2, CELL)
  assert (width, height) == (x + w + 2 * FRAME + MARGIN, y + h + 2 * FRAME + MARGIN)


def test_put_frames_the_pixels_and_titles_them(tmp_path):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 255, CELL + (3,), dtype=np.uint8)
  canvas = panels.PanelCanvas(panels.grid_size(2, 2, CELL), CELL, "header")
  inner = canvas.put(1, 1, pixels, "title")
  x, y = panels.panel_origin(1, 1, CELL)
  assert inner == (x + FRAME, y + FRAME)
  image = np.asarray(canvas.finish(str(tmp_path / "sub" / "canvas.png")))
  assert np.array_equal(np.asarray(Image.open(tmp_path / "sub" / "canvas.png")), image)
  h, w = CELL
  np.testing.assert_array_equal(image[y + FRAME:y + FRAME + h, x + FRAME:x + FRAME + w], pixels)
  frame = np.concatenate([image[y:y + FRAME, x:x + w + 2 * FRAME].reshape(-1, 3),
                          image[y:y + h + 2 * FRAME, x:x + FRAME].reshape(-1, 3)])
  assert (frame == panels.FRAME_COLOR).all()
  # Dark text in the title strip above the frame and in the header line; the
  # empty panel (0, 0) is background.
  assert image[y - panels.TITLE:y, x:x + w].min() < 100
  assert image[MARGIN:MARGIN + panels.HEADER, MARGIN:MARGIN + 40].min() < 100
  x0, y0 = panels.panel_origin(0, 0, CELL)
  assert (image[y0:y0 + h, x0:x0 + w] == BACKGROUND).all()
  # put_at: another frame colour, the same geometry.
  canvas.put_at((x0, y0), pixels, (255, 0, 0))
  assert tuple(np.asarray(canvas.image)[y0, x0]) == (255, 0, 0)


def test_fit_width_and_default_cell():
  assert panels.fit_width(500, ["ab"]) == 500
  long = "x" * 200
  assert panels.fit_width(10, [long]) > 10 + 2 * MARGIN  # widened to the text
  assert panels.default_cell(np.zeros((64, 32, 3))) == (256, 128)  # x4: >= 128 wide
  assert panels.default_cell(np.zeros((5, 64, 32, 3)), panels.MIN_FRAME_WIDTH) == (128, 64)
  assert panels.default_cell(np.zeros((300, 200, 3))) == (300, 200)


def test_items_load_images_and_clips(tmp_path):
  rng = np.random.default_rng(1)
  frames = rng.integers(0, 255, (3, 16, 8, 3), dtype=np.uint8)
  paths = []
  for t, frame in enumerate(frames):
    paths.append(str(tmp_path / f"f{t}.png"))
    Image.fromarray(frame).save(paths[-1])
  clip = panels.Item(paths)
  assert clip.is_clip and not panels.Item(paths[0]).is_clip
  np.testing.assert_array_equal(clip.clip(), frames)
  np.testing.assert_array_equal(clip.clip(length=2), frames[:2])
  np.testing.assert_array_equal(clip.image(), frames[0])  # a clip's image: frame 0
  np.testing.assert_array_equal(panels.Item(frames).clip((32, 16)),
                                [panels.resize(f, (32, 16)) for f in frames])
  image = panels.Item(paths[1])
  np.testing.assert_array_equal(image.image(), frames[1])
  assert image.image((32, 16)).shape == (32, 16, 3) and image.clip().shape == (1, 16, 8, 3)
  with pytest.raises(FileNotFoundError, match="missing.png"):
    panels.Item(str(tmp_path / "missing.png")).image()
