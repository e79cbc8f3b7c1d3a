"""Pieces every paper figure shares: checking, resizing and loading the images
drawn in its panels (the panel geometry itself is ``duatm.panel_origin``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image


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


def load_image(path: str, size: tuple[int, int]) -> np.ndarray:
  """An image file -> (size[0], size[1], 3) uint8 RGB (the model's input size)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No image file {path!r}.")
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR))
