r"""Attention-Driven ReID's part boxes and intra-attention maps of one image, as PNG.

Yang, Yan, Lu et al., Pattern Recognition 2019: Fig. 4c (the five body
regions R0..R4 of Eq. 1-2 on the image) and Fig. 7 (the intra-attention of
Blocks 2, 3 and 4, per branch). The boxes come from
``reidjax.data.part_boxes.part_boxes_np`` (``data.parts``: pose boxes from
the image's keypoints, or the stripes); the crops from
``reidjax.data.part_boxes.crop_parts_tf``, as the pipeline cuts them; the
maps from ``AttentionDriven.attention_maps``: the mask m of Eq. 7
averaged over channels, (h, w) per block.

  python -m reidjax.viz.attdriven --workdir W --image x.jpg --out maps.png \
      [--keypoints keypoints.json] [--step N]

``--keypoints`` is a keypoints file (``reidjax.data.keypoints`` format) that
holds the image's file name; without it the boxes are the stripes.

Layout (pixels, ``reidjax.viz.duatm.panel_origin`` with one cell size for
all panels): a HEADER-high line; column 0 of row 0 is the image with the
five boxes, R_k outlined in ``BOX_COLORS[k]`` (a BOX_LINE-wide rectangle
whose outer edge is the box, clipped to the image, scaled to the cell);
row r (0 = global, 1..4 = parts 1..4) has the branch's crop in column 1 and
its maps of Blocks 2, 3, 4 over the crop in columns 2, 3, 4 (m / max(m)
through the "inferno" colour map, ``reidjax.viz.duatm.overlay``), titled
with the block and max(m). A missing block (no intra-attention there)
leaves its panel empty.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from PIL import Image

from reidjax.viz.duatm import overlay
from reidjax.viz import panels
from reidjax.viz.report import BACKGROUND  # noqa: F401 (the canvas colour, for readers)

BRANCHES = ("global", "part1", "part2", "part3", "part4")
BRANCH_TITLES = ("R0 whole body", "R1 head", "R2 upper body", "R3 upper legs", "R4 lower legs")
STAGES = (2, 3, 4)
BOX_COLORS = ((255, 255, 255), (255, 0, 0), (0, 200, 0), (0, 90, 255), (255, 200, 0))
BOX_LINE = 2


def box_in_cell(box: Sequence[float], image_size: tuple[int, int],
                cell: tuple[int, int]) -> tuple[int, int, int, int]:
  """Box (x1, y1, x2, y2) in image pixels -> inclusive pixel rectangle in the cell,
  clipped to it (the drawn outline's outer edge)."""
  sy, sx = cell[0] / image_size[0], cell[1] / image_size[1]
  x1 = int(np.clip(math.floor(box[0] * sx), 0, cell[1] - 1))
  y1 = int(np.clip(math.floor(box[1] * sy), 0, cell[0] - 1))
  x2 = int(np.clip(math.ceil(box[2] * sx) - 1, 0, cell[1] - 1))
  y2 = int(np.clip(math.ceil(box[3] * sy) - 1, 0, cell[0] - 1))
  return x1, y1, x2, y2


def draw_part_attention(image: Any, boxes: Any, crops: Sequence[Any],
                        maps: Mapping[str, Mapping[str, Any]], *,
                        cell: tuple[int, int] | None = None, note: str = "",
                        path: str | None = None) -> Image.Image:
  """Draws the figure (module doc layout).

  Args:
    image: uint8 (H, W, 3) the original image.
    boxes: (5, 4) R0..R4 (x1, y1, x2, y2) in its pixels.
    crops: 5 uint8 crops (R0, R1..R4), any sizes.
    maps: {branch: {"stage{i}": (h, w) mask map}} for the branches of
      ``BRANCHES`` that exist.
    cell: (height, width) of every panel (default: the image enlarged by an
      integer factor to at least MIN_CELL_WIDTH wide).
    note: text at the start of the header.
    path: if set, the PNG is written there.

  Returns:
    The RGB image.
  """
  image = panels.as_uint8_image(image)
  boxes = np.asarray(boxes, np.float64)
  if boxes.shape != (5, 4):
    raise ValueError(f"boxes must be (5, 4) R0..R4, got shape {boxes.shape}.")
  if len(crops) != 5:
    raise ValueError(f"crops must be the 5 crops R0..R4, got {len(crops)}.")
  crops = [panels.as_uint8_image(c, f"crops[{k}]") for k, c in enumerate(crops)]
  cell = tuple(int(v) for v in (panels.default_cell(image) if cell is None else cell))
  header = ((f"{note} | " if note else "")
            + "Attention-Driven: part boxes R0-R4; intra-attention m (channel mean) of "
            "Blocks 2-4 per branch, max above")
  width, height = panels.grid_size(len(BRANCHES), 5, cell)
  canvas = panels.PanelCanvas((panels.fit_width(width, [header]), height), cell, header)
  x0, y0 = canvas.put(0, 0, panels.resize(image, cell), "boxes")
  for k, box in enumerate(boxes):
    x1, y1, x2, y2 = box_in_cell(box, image.shape[:2], cell)
    canvas.draw.rectangle([x0 + x1, y0 + y1, x0 + x2, y0 + y2], outline=BOX_COLORS[k],
                          width=BOX_LINE)
  for row, (branch, title) in enumerate(zip(BRANCHES, BRANCH_TITLES)):
    crop = panels.resize(crops[row], cell)
    canvas.put(row, 1, crop, title)
    for col, stage in enumerate(STAGES, start=2):
      m = maps.get(branch, {}).get(f"stage{stage}")
      if m is None:
        continue
      m = np.asarray(m, np.float32)
      canvas.put(row, col, overlay(crop, m.reshape(-1), m.shape),
                 f"B{stage} max {m.max():.3f}")
  return canvas.finish(path)


def crops_and_inputs(image: np.ndarray, boxes: np.ndarray, data_config: Any
                     ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
  """The 5 uint8 crops of ``boxes`` and the model's inputs (batch of one).

  Crops as the pipeline cuts them (``crop_parts_tf``: R0 to (data.height,
  data.width), parts to (data.parts.height, data.parts.width), the ImageNet
  mean colour outside the image), then ImageNet-normalised.
  """
  # pylint: disable-next=g-import-not-at-top
  from reidjax import imagenet
  from reidjax.data import part_boxes as part_boxes_lib
  from reidjax.data.tensorflow_cpu import tf
  mean, std = np.asarray(imagenet.IMAGENET_MEAN), np.asarray(imagenet.IMAGENET_STD)
  pixels = tf.constant(image[None].astype(np.float32) / 255.0)
  resized = tf.image.resize(pixels, (data_config.height, data_config.width))
  scale = np.array([data_config.width / image.shape[1], data_config.height / image.shape[0]] * 2)
  config = part_boxes_lib.PartConfig.from_config(data_config.parts)
  whole, parts = part_boxes_lib.crop_parts_tf(
      resized, tf.constant((boxes * scale)[None], tf.float32), config, fill=mean)
  whole, parts = whole.numpy()[0], parts.numpy()[0]
  crops = [(np.clip(c, 0, 1) * 255).round().astype(np.uint8) for c in [whole, *parts]]
  inputs = {"images": ((whole - mean) / std)[None].astype(np.float32),
            "parts": ((parts - mean) / std)[None].astype(np.float32)}
  return crops, inputs


def part_attention_figure(model: Any, variables: Any, image: Any, keypoints: Any,
                          data_config: Any, path: str | None, *,
                          cell: tuple[int, int] | None = None) -> Image.Image:
  """Boxes of ``image`` from its keypoints, the crops, the model's maps, the figure.

  Args:
    model, variables: an ``AttentionDriven`` model and its variables.
    image: uint8 RGB (H, W, 3), the original image.
    keypoints: (18, 3) [x, y, confidence] in its pixels, or None (stripes).
    data_config: the ``data`` section (crop sizes, ``parts``).
    path: where the PNG goes (None: not written).
    cell: panel size (default as ``draw_part_attention``).
  """
  # pylint: disable-next=g-import-not-at-top
  from reidjax.data import part_boxes as part_boxes_lib
  image = panels.as_uint8_image(image)
  if not callable(getattr(model, "attention_maps", None)):
    raise ValueError(f"{type(model).__name__} has no attention_maps; pass an AttentionDriven "
                     "model.")
  config = part_boxes_lib.PartConfig.from_config(data_config.parts)
  if keypoints is None:
    boxes = part_boxes_lib.stripe_boxes(image.shape[0], image.shape[1], config.beta)
  else:
    boxes = part_boxes_lib.part_boxes_np(np.asarray(keypoints, np.float64), image.shape[0],
                                         image.shape[1], config)
  crops, inputs = crops_and_inputs(image, boxes, data_config)
  # Op by op: one image through five branches; compiling them would take longer.
  maps = jax.tree.map(lambda m: np.asarray(m[0]),
                      model.apply(variables, inputs, method="attention_maps"))
  source = "stripes" if keypoints is None or config.source == "stripes" else "pose"
  return draw_part_attention(image, boxes, crops, maps, cell=cell, note=f"{source} boxes",
                             path=path)


def paper_figure(model: Any, variables: Any, data_config: Any, query: panels.Item,
                 gallery: panels.Item, path: str | None = None) -> Image.Image:
  """``reidjax.viz.paper_figure``'s entry: the query image at its own size with
  its keypoints' part boxes (no keypoints: the stripes) and the model's maps."""
  del gallery  # The figure is of one image.
  return part_attention_figure(model, variables, query.image(), query.keypoints,
                               data_config, path)


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(
      prog="python -m reidjax.viz.attdriven",
      description="Draws a trained Attention-Driven model's part boxes and the "
                  "intra-attention maps of Blocks 2-4 of each branch for one image as a PNG.")
  parser.add_argument("--workdir", required=True, help="train.py workdir of the model.")
  parser.add_argument("--image", required=True, help="the image.")
  parser.add_argument("--out", required=True, help="output PNG.")
  parser.add_argument("--keypoints", default="",
                      help="keypoints JSON holding the image's file name (default: stripes).")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest).")
  args = parser.parse_args(argv)
  # pylint: disable-next=g-import-not-at-top
  from reidjax.data import keypoints as keypoints_lib
  from reidjax.inference import ReidEmbedder
  if not os.path.isfile(args.image):
    raise FileNotFoundError(f"No image file {args.image!r}.")
  with Image.open(args.image) as opened:
    image = np.asarray(opened.convert("RGB"))
  joints = None
  if args.keypoints:
    table = keypoints_lib.read_keypoints_file(args.keypoints)
    name = os.path.basename(args.image)
    matches = [k for k in table if os.path.basename(k) == name]
    if not matches:
      raise ValueError(f"{args.keypoints!r} has no keypoints for {name!r}; leave out "
                       "--keypoints to draw the stripes.")
    joints = table[matches[0]]
  embedder = ReidEmbedder.from_workdir(args.workdir, args.step, model_name="attdriven")
  part_attention_figure(embedder.model, embedder.variables, image, joints,
                        embedder.config.data, args.out)
  print(f"Wrote {args.out}")
  return args.out


if __name__ == "__main__":
  main()
