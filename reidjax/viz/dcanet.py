r"""DCANet's K spatial attention maps of one image (its Fig. 3), as PNG.

Hu, Zhou, Huang, BMVC 2021, Sec. 4.3 "Visualization analysis" and Fig. 3:
the input image, then the attention distribution A_sp,k (Eq. 1, a softmax
over the H x W positions of the DCAM's input map) of each of the K spatial
blocks over it, with each block's maximum attention score above it. The maps
come from ``DCANet.dcam_outputs`` (``aux["spatial_attention"]`` of
``reidjax.layers.dcam.DCAM``).

  python -m reidjax.viz.dcanet --workdir W --image x.jpg --out maps.png \
      [--stage 3] [--step N]

A map cell (r, c) of an (h, w) map covers the image pixels of
``reidjax.viz.duatm.position_box`` (the map tiles the image evenly); each
cell is one colour: A / max(A) of that block through the "inferno" colour
map, blended over the image (``reidjax.viz.duatm.overlay``), so the
brightest cell of panel k is block k's most attended position, and the
title gives max(A) (1 / (h w) would be a flat map).

Layout (pixels): a HEADER-high line, then rows of panels; panel (row, col)
has its frame's top-left corner at ``reidjax.viz.duatm.panel_origin(row,
col, cell)``, a TITLE-high strip above it. Row 0, col 0 is the input image;
block k (0-based, titled "#k+1") is at row k // columns, col 1 + k % columns
(column 0 of later rows stays empty, so the maps line up under each other).
"""

from __future__ import annotations

import argparse
import functools
from typing import Any, Sequence

import jax
import numpy as np
from PIL import Image

from reidjax.viz.duatm import overlay
from reidjax.viz import panels

DEFAULT_COLUMNS = 8


def map_panel(block: int, columns: int = DEFAULT_COLUMNS) -> tuple[int, int]:
  """(row, col) of block ``block``'s panel (0-based block index)."""
  return block // columns, 1 + block % columns


def draw_attention_maps(image: Any, attention: Any, *, cell: tuple[int, int] | None = None,
                        columns: int = DEFAULT_COLUMNS, note: str = "",
                        path: str | None = None) -> Image.Image:
  """Draws the image and its K spatial attention maps (module doc layout).

  Args:
    image: uint8 RGB (H, W, 3) image (or a PIL image).
    attention: (K, h, w) maps A_sp,k of this image (non-negative).
    cell: (height, width) of every panel (default: the image enlarged by an
      integer factor to at least MIN_CELL_WIDTH wide).
    columns: maps per row.
    note: text at the start of the header line.
    path: if set, the PNG is written there.

  Returns:
    The RGB image.
  """
  image = panels.as_uint8_image(image)
  attention = np.asarray(attention, np.float32)
  if attention.ndim != 3 or attention.shape[0] < 1:
    raise ValueError(f"attention must be (K, h, w) maps, got shape {attention.shape}.")
  if columns < 1:
    raise ValueError(f"columns must be >= 1, got {columns}.")
  num_blocks, grid = attention.shape[0], attention.shape[1:]
  cell = tuple(int(v) for v in cell) if cell is not None else panels.default_cell(image)
  shown = panels.resize(image, cell)
  header = ((f"{note} | " if note else "")
            + f"DCANet: {num_blocks} spatial attention maps on a {grid[0]} x {grid[1]} map, "
            "max score above each")
  width, height = panels.grid_size(-(-num_blocks // columns), 1 + min(num_blocks, columns),
                                   cell)
  canvas = panels.PanelCanvas((panels.fit_width(width, [header]), height), cell, header)
  canvas.put(0, 0, shown, "input")
  for k in range(num_blocks):
    row, col = map_panel(k, columns)
    canvas.put(row, col, overlay(shown, attention[k].reshape(-1), grid),
               f"#{k + 1} max {attention[k].max():.3f}")
  return canvas.finish(path)


# Jitted whole, one program per model and input shape (Flax modules hash by
# their fields): compiling a small model is faster on CPU than running it
# op by op, and repeated figures reuse the program.
@functools.partial(jax.jit, static_argnums=0)
def _dcam_outputs(model, variables, images):
  return model.apply(variables, images, method="dcam_outputs")


def spatial_attention(model: Any, variables: Any, image: Any, *,
                      stage: int | None = None,
                      size: tuple[int, int] | None = None) -> tuple[int, np.ndarray]:
  """(stage, (K, h, w) A_sp,k) of a DCANet's DCAM on one uint8 image.

  Args:
    model: a ``reidjax.models.dcanet.DCANet`` (image or video: a frame).
    variables: its variables.
    image: uint8 RGB (H, W, 3).
    stage: the DCAM's stage (default: the first one).
    size: (height, width) the model takes; default: the image's own size.
  """
  # pylint: disable-next=g-import-not-at-top
  from reidjax.inference import normalize_images
  blocks = getattr(model, "blocks_per_stage", None)
  if blocks is None:
    raise ValueError(f"{type(model).__name__} has no DCAM; pass a DCANet model.")
  if not blocks:
    raise ValueError("This DCANet has no DCAM (model.dcam_stages is empty).")
  stage = next(iter(blocks)) if stage is None else int(stage)
  if stage not in blocks:
    raise ValueError(f"No DCAM after stage {stage}; this model has DCAMs after stages "
                     f"{list(blocks)} (model.dcam_stages).")
  if model.attention == "channel":
    raise ValueError("This DCANet has no spatial module (model.attention='channel'): "
                     "there are no spatial attention maps to draw.")
  image = panels.as_uint8_image(image)
  height, width = size if size is not None else image.shape[:2]
  x = normalize_images(image[None], height, width)
  outputs = _dcam_outputs(model, variables, x)
  return stage, np.asarray(outputs[f"stage{stage}"]["spatial_attention"][0])


def attention_maps_figure(model: Any, variables: Any, image: Any, path: str | None, *,
                          stage: int | None = None, size: tuple[int, int] | None = None,
                          cell: tuple[int, int] | None = None,
                          columns: int = DEFAULT_COLUMNS) -> Image.Image:
  """Runs a DCANet on one image and draws its spatial attention (Fig. 3).

  Args:
    model, variables: a DCANet and its variables ({"params", "batch_stats"}).
    image: uint8 RGB (H, W, 3) (for a video model: one frame).
    path: where the PNG goes (None: not written).
    stage: which DCAM (default: the first one).
    size: (height, width) the model takes (the config's data.height /
      data.width); default: the image's own size.
    cell, columns: as for ``draw_attention_maps``.

  Returns:
    The RGB image.
  """
  image = panels.as_uint8_image(image)
  stage, maps = spatial_attention(model, variables, image, stage=stage, size=size)
  return draw_attention_maps(image, maps, cell=cell, columns=columns,
                             note=f"stage {stage}, K = {maps.shape[0]}", path=path)


def paper_figure(model: Any, variables: Any, data_config: Any, query: panels.Item,
                 gallery: panels.Item, path: str | None = None) -> Image.Image | None:
  """``reidjax.viz.paper_figure``'s entry: Fig. 3 of the query (a clip: its first
  frame) at the model's input size; None for a DCANet without spatial maps."""
  del gallery  # Fig. 3 is of one image.
  if not getattr(model, "blocks_per_stage", None) or model.attention == "channel":
    return None
  size = (data_config.height, data_config.width)
  return attention_maps_figure(model, variables, query.image(size), path, size=size)


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(
      prog="python -m reidjax.viz.dcanet",
      description="Draws a trained DCANet's K spatial attention maps of one image "
                  "with each block's maximum score (the paper's Fig. 3) as a PNG.")
  parser.add_argument("--workdir", required=True,
                      help="train.py workdir holding the DCANet checkpoint.")
  parser.add_argument("--image", required=True, help="the image (video model: a frame).")
  parser.add_argument("--out", required=True, help="output PNG.")
  parser.add_argument("--stage", type=int, default=None,
                      help="which DCAM, by the stage it follows (default: the first).")
  parser.add_argument("--step", type=int, default=None,
                      help="checkpoint step (default: latest).")
  parser.add_argument("--columns", type=int, default=DEFAULT_COLUMNS,
                      help="maps per row.")
  args = parser.parse_args(argv)
  # pylint: disable-next=g-import-not-at-top
  from reidjax.inference import ReidEmbedder
  embedder = ReidEmbedder.from_workdir(args.workdir, args.step, model_name="dcanet")
  config = embedder.config
  size = (config.data.height, config.data.width)
  attention_maps_figure(embedder.model, embedder.variables, panels.load_image(args.image, size),
                        args.out, stage=args.stage, size=size, columns=args.columns)
  print(f"Wrote {args.out}")
  return args.out


if __name__ == "__main__":
  main()
