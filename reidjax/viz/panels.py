"""The panel canvas every paper figure draws on, and the image helpers it shares.

Figures of DuATM (Fig. 8), DCANet (Fig. 3), CACE-Net (Fig. 5), FGRA (Fig. 5)
and Attention-Driven ReID (Figs. 4c, 7) share one layout (no equation here):
a HEADER-high text line, then rows of framed panels of one ``cell`` = (h, w)
size. Panel (row, col)'s frame has its top-left corner at

  x(col) = MARGIN + col * (w + 2 FRAME + GAP)
  y(row) = MARGIN + HEADER + row * (TITLE + h + 2 FRAME + GAP) + TITLE

(``panel_origin``; report.py's MARGIN, FRAME, GAP), a TITLE-high strip above
it for its title, and the panel's pixels FRAME inside the frame.
``PanelCanvas`` draws the header, panels and titles; ``fit_width`` widens a
canvas so that every text line fits; ``default_cell`` enlarges a small image
by an integer factor to at least MIN_CELL_WIDTH (clip frames:
MIN_FRAME_WIDTH) wide.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from reidjax.viz.report import BACKGROUND, FRAME, GAP, MARGIN

HEADER, TITLE = 14, 14
FRAME_COLOR = (200, 200, 200)
TEXT_COLOR = (0, 0, 0)
# Small inputs are enlarged (integer factor) to at least this width: images
# so that the titles fit, clip frames (many per row) so that they are seen.
MIN_CELL_WIDTH = 128
MIN_FRAME_WIDTH = 64


def panel_origin(row: int, col: int, cell: tuple[int, int]) -> tuple[int, int]:
  """(x, y) of the top-left corner of panel (row, col)'s frame (module doc)."""
  h, w = cell
  x = MARGIN + col * (w + 2 * FRAME + GAP)
  y = MARGIN + HEADER + row * (TITLE + h + 2 * FRAME + GAP) + TITLE
  return x, y


def grid_size(rows: int, cols: int, cell: tuple[int, int]) -> tuple[int, int]:
  """(width, height) of a canvas holding ``rows`` x ``cols`` panels."""
  return (panel_origin(0, cols, cell)[0] - GAP + MARGIN,
          panel_origin(rows, 0, cell)[1] - TITLE - GAP + MARGIN)


def default_cell(image: np.ndarray, least: int = MIN_CELL_WIDTH) -> tuple[int, int]:
  """(h, w) of an (..., H, W, 3) image or clip enlarged by the smallest integer
  factor that makes it at least ``least`` pixels wide."""
  height, width = image.shape[-3:-1]
  scale = max(1, -(-least // width))
  return height * scale, width * scale


def fit_width(width: int, texts: Sequence[str]) -> int:
  """``width``, widened so that every text line fits between the margins."""
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  longest = max(measure.textlength(t) for t in texts)
  return max(width, math.ceil(longest) + 2 * MARGIN)


class PanelCanvas:
  """A white canvas with a header line, on which framed panels are put.

  Args:
    size: (width, height) in pixels.
    cell: (h, w) of every panel.
    header: the text at (MARGIN, MARGIN).
  """

  def __init__(self, size: tuple[int, int], cell: tuple[int, int], header: str):
    self.cell = (int(cell[0]), int(cell[1]))
    self.image = Image.new("RGB", (int(size[0]), int(size[1])), BACKGROUND)
    self.draw = ImageDraw.Draw(self.image)
    self.draw.text((MARGIN, MARGIN), header, fill=TEXT_COLOR)

  def title(self, origin: tuple[int, int], text: str) -> None:
    """Writes ``text`` in the TITLE strip above the frame at ``origin``."""
    self.draw.text((origin[0], origin[1] - TITLE + 1), text, fill=TEXT_COLOR)

  def put_at(self, origin: tuple[int, int], pixels: np.ndarray,
             frame_color: tuple[int, int, int] = FRAME_COLOR) -> tuple[int, int]:
    """Frames the (h, w, 3) uint8 ``pixels`` with the frame's corner at
    ``origin``; returns the (x, y) of the pixels' top-left corner."""
    x, y = origin
    h, w = self.cell
    self.draw.rectangle([x, y, x + w + 2 * FRAME - 1, y + h + 2 * FRAME - 1], fill=frame_color)
    self.image.paste(Image.fromarray(pixels), (x + FRAME, y + FRAME))
    return x + FRAME, y + FRAME

  def put(self, row: int, col: int, pixels: np.ndarray,
          title: str | None = None) -> tuple[int, int]:
    """Puts panel (row, col) at ``panel_origin`` with its title above it;
    returns the (x, y) of the pixels' top-left corner."""
    origin = panel_origin(row, col, self.cell)
    if title is not None:
      self.title(origin, title)
    return self.put_at(origin, pixels)

  def finish(self, path: str | None) -> Image.Image:
    """The image, also written as PNG to ``path`` when set."""
    if path:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      self.image.save(path)
    return self.image


def as_uint8_image(image: Any, name: str = "image") -> np.ndarray:
  """A PIL image or array -> (H, W, 3) uint8 RGB, or a clear error."""
  if isinstance(image, Image.Image):
    image = np.asarray(image.convert("RGB"))
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"{name} must be a uint8 RGB (H, W, 3) image (pass it before "
                     f"normalisation), got {image.dtype} {image.shape}.")
  return image


def resize(image: np.ndarray, cell: tuple[int, int]) -> np.ndarray:
  """(H, W, 3) uint8 -> the panel's (h, w) = ``cell``, bilinear."""
  if image.shape[:2] == tuple(cell):
    return image
  return np.asarray(Image.fromarray(image).resize((cell[1], cell[0]), Image.BILINEAR))


def load_image(path: str, size: tuple[int, int] | None = None) -> np.ndarray:
  """An image file -> (H, W, 3) uint8 RGB, resized (bilinear) to ``size`` = (height,
  width) when given (the model's input size)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No image file {path!r}.")
  with Image.open(path) as image:
    image = image.convert("RGB")
    if size is not None:
      image = image.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(image)


def load_images(paths: Sequence[str], size: tuple[int, int] | None = None) -> np.ndarray:
  """Image files (a clip's frames) -> (N, H, W, 3) uint8, each as ``load_image``."""
  return np.stack([load_image(p, size) for p in paths])


@dataclasses.dataclass(frozen=True)
class Item:
  """One query or gallery item as a paper figure takes it.

  Attributes:
    images: an image (a file or uint8 (H, W, 3)), or a clip (its frame files
      in order, or uint8 (T, H, W, 3)).
    keypoints: pose models: the image's (18, 3) COCO-18 [x, y, confidence]
      in its own (file) pixels (``reidjax.data.keypoints``); None: none known.
  """

  images: Any
  keypoints: np.ndarray | None = None

  @property
  def is_clip(self) -> bool:
    if isinstance(self.images, (str, os.PathLike)):
      return False
    if isinstance(self.images, np.ndarray):
      return self.images.ndim == 4
    return True  # A sequence of frame files.

  def clip(self, size: tuple[int, int] | None = None,
           length: int | None = None) -> np.ndarray:
    """uint8 (T, H, W, 3): the clip's first ``length`` frames (all when None), an
    image as a clip of one; resized to ``size`` = (height, width) when given."""
    if not self.is_clip:
      return self.image(size)[None]
    frames = self.images[:length] if length else self.images
    if isinstance(frames, np.ndarray):
      return np.stack([as_uint8_image(f, "frame") if size is None else
                       resize(as_uint8_image(f, "frame"), size) for f in frames])
    return load_images([os.fspath(f) for f in frames], size)

  def image(self, size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 (H, W, 3): the image (a clip's first frame), resized to ``size`` =
    (height, width) when given, else at its own size."""
    if self.is_clip:
      return self.clip(size, length=1)[0]
    if isinstance(self.images, np.ndarray):
      image = as_uint8_image(self.images)
      return image if size is None else resize(image, size)
    return load_image(os.fspath(self.images), size)
