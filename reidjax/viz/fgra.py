r"""FGRA's region response maps over a clip (its Fig. 5), as PNG.

Chen et al., AAAI 2020, Sec. "Ablation Study" and Fig. 5: the reference
frame with its N_s regions boxed, and in each region's row the response
maps of the region-aligned features in the clip's frames ("each response
map in the same row has consistently high saliency on the same region").
The maps come from ``FGRA.alignment_outputs``: ``responses`` (B, T, R, h,
w), the channel mean of F_n o M_{n,i} (the aligned feature map before
Eq. 2's spatial mean); the temporal weights are the channel mean of the
alignment scores s^_{n,i} (Eq. 4).

  python -m reidjax.viz.fgra --workdir W --out regions.png \
      [--frames f1.jpg f2.jpg ... | --frames DIR] [--tracklet K] [--step N]

Without ``--frames`` the clip is the first ``data.clip_length`` frames of
query tracklet K (default 0) of the run's dataset.

Layout (pixels): a HEADER-high line, then one row per region i (0-based,
titled "#i+1"); panel (i, 0) is the reference frame (frame 0 of the clip)
with region i's stripe outlined in red (rows ``region_box``), panels (i,
1 + n) are frame n with region i's response (w / max(w) of that panel
through "inferno", blended like ``reidjax.viz.duatm.overlay``), titled
with the frame's temporal weight. Frame panel corners are at
``reidjax.viz.duatm.panel_origin(row, col, cell)``.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
from typing import Any, Sequence

import jax
import numpy as np
from PIL import Image

from reidjax.layers.alignment import region_bounds
from reidjax.viz.duatm import overlay
from reidjax.viz import panels

BOX_COLOR = (255, 0, 0)


def region_box(region: int, num_regions: int, map_height: int,
               size: tuple[int, int]) -> tuple[int, int, int, int]:
  """(x0, y0, x1, y1), x1 / y1 exclusive: the image pixels of region ``region``'s
  stripe (map rows ``region_bounds``) in an image of ``size`` (H, W)."""
  start, end = region_bounds(map_height, num_regions)[region]
  height, width = size
  return 0, math.ceil(start * height / map_height), width, math.ceil(end * height / map_height)


def _as_uint8_clip(frames: Any) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be a clip (T, H, W, 3) of RGB frames, got shape "
                     f"{frames.shape}.")
  if frames.dtype != np.uint8:
    raise ValueError(f"frames must be uint8 RGB for display, got {frames.dtype}; pass "
                     "the frames before normalisation.")
  return frames


def draw_region_responses(frames: Any, responses: Any, weights: Any = None, *,
                          cell: tuple[int, int] | None = None, note: str = "",
                          path: str | None = None) -> Image.Image:
  """Draws the reference frame's regions and their responses over the clip.

  Args:
    frames: uint8 RGB clip (T, H, W, 3); frame 0 is the reference.
    responses: (R, T, h, w) non-negative response maps, region-major.
    weights: optional (R, T) temporal weights shown in the titles.
    cell: (height, width) of every panel (default: the frames enlarged by an
      integer factor to at least MIN_CELL_WIDTH wide).
    note: text at the start of the header line.
    path: if set, the PNG is written there.

  Returns:
    The RGB image.
  """
  frames = _as_uint8_clip(frames)
  responses = np.asarray(responses, np.float32)
  if responses.ndim != 4 or responses.shape[1] != frames.shape[0]:
    raise ValueError(f"responses must be (R, T, h, w) with T = {frames.shape[0]} frames, "
                     f"got shape {responses.shape}.")
  if responses.min() < 0:
    raise ValueError("responses must be non-negative (sigmoid maps times ReLU features).")
  num_regions, num_frames, grid = responses.shape[0], responses.shape[1], responses.shape[2:]
  cell = tuple(int(v) for v in (panels.default_cell(frames) if cell is None else cell))
  shown = [panels.resize(f, cell) for f in frames]
  header = ((f"{note} | " if note else "")
            + f"FGRA: {num_regions} regions of the reference frame (red) and their "
            f"responses in {num_frames} frames ({grid[0]} x {grid[1]} maps)")
  width, height = panels.grid_size(num_regions, 1 + num_frames, cell)
  canvas = panels.PanelCanvas((panels.fit_width(width, [header]), height), cell, header)
  for i in range(num_regions):
    x, y = canvas.put(i, 0, shown[0], f"#{i + 1} reference")
    x0, y0, x1, y1 = region_box(i, num_regions, grid[0], cell)
    canvas.draw.rectangle([x + x0, y + y0, x + x1 - 1, y + y1 - 1], outline=BOX_COLOR,
                          width=2)
    for n in range(num_frames):
      title = f"t{n}" + (f" w {float(weights[i][n]):.2f}" if weights is not None else "")
      canvas.put(i, 1 + n, overlay(shown[n], responses[i, n].reshape(-1), grid), title)
  return canvas.finish(path)


@functools.partial(jax.jit, static_argnums=0)
def _alignment_outputs(model, variables, clips):
  out = model.apply(variables, {"images": clips}, method="alignment_outputs")
  return {"responses": out["responses"], "temporal_weights": out["temporal_weights"]}


def region_responses(model: Any, variables: Any, frames: Any, *,
                     size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """((R, T, h, w) responses, (R, T) temporal weights) of an FGRA on one uint8 clip.

  Args:
    model: a ``reidjax.models.fgra.FGRA`` with ``region_alignment=True``.
    variables: its variables.
    frames: uint8 RGB clip (T, H, W, 3).
    size: (height, width) the model takes; default: the frames' own size.
  """
  # pylint: disable-next=g-import-not-at-top
  from reidjax.inference import normalize_images
  if not callable(getattr(model, "alignment_outputs", None)):
    raise ValueError(f"{type(model).__name__} is not an FGRA model.")
  if not (model.local_branch and model.region_alignment):
    raise ValueError("This FGRA has no region alignment (model.local_branch and "
                     "model.region_alignment must be True): there are no response maps.")
  frames = _as_uint8_clip(frames)
  height, width = size if size is not None else frames.shape[1:3]
  out = _alignment_outputs(model, variables, normalize_images(frames[None], height, width))
  responses = np.moveaxis(np.asarray(out["responses"][0]), 1, 0)  # (R, T, h, w)
  weights = np.asarray(out["temporal_weights"][0])  # (T, R, C) or (T, R)
  if weights.ndim == 3:
    weights = weights.mean(axis=-1)
  return responses, weights.T


def region_alignment_figure(model: Any, variables: Any, frames: Any, path: str | None, *,
                            size: tuple[int, int] | None = None,
                            cell: tuple[int, int] | None = None) -> Image.Image:
  """Runs an FGRA on one clip and draws Fig. 5 (module doc layout)."""
  frames = _as_uint8_clip(frames)
  responses, weights = region_responses(model, variables, frames, size=size)
  return draw_region_responses(frames, responses, weights, cell=cell, path=path,
                               note=f"N_s = {responses.shape[0]}")


def paper_figure(model: Any, variables: Any, data_config: Any, query: panels.Item,
                 gallery: panels.Item, path: str | None = None) -> Image.Image | None:
  """``reidjax.viz.paper_figure``'s entry: Fig. 5 of the query's first
  ``data.clip_length`` frames at the model's input size; None for an FGRA
  without region alignment."""
  del gallery  # Fig. 5 is of one clip.
  if not (model.local_branch and model.region_alignment):
    return None
  size = (data_config.height, data_config.width)
  return region_alignment_figure(model, variables,
                                 query.clip(size, data_config.get("clip_length", None)),
                                 path, size=size)


def _load_frames(paths: Sequence[str], size: tuple[int, int]) -> np.ndarray:
  """Frame files, or one folder of them (sorted by name) -> (T, H, W, 3) uint8."""
  if len(paths) == 1 and os.path.isdir(paths[0]):
    folder = paths[0]
    paths = sorted(os.path.join(folder, p) for p in os.listdir(folder)
                   if p.lower().endswith((".jpg", ".jpeg", ".png", ".bmp")))
    if not paths:
      raise FileNotFoundError(f"No frame images in {folder!r}.")
  return panels.load_images(paths, size)


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(
      prog="python -m reidjax.viz.fgra",
      description="Draws a trained FGRA's reference-frame regions and their response "
                  "maps over a clip's frames (the paper's Fig. 5) as a PNG.")
  parser.add_argument("--workdir", required=True, help="train.py workdir of an FGRA run.")
  parser.add_argument("--out", required=True, help="output PNG.")
  parser.add_argument("--frames", nargs="+", default=None,
                      help="frame images in temporal order, or one folder of them "
                           "(default: a query tracklet of the run's dataset).")
  parser.add_argument("--tracklet", type=int, default=0,
                      help="query tracklet index when --frames is not given.")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest).")
  args = parser.parse_args(argv)
  # pylint: disable-next=g-import-not-at-top
  from reidjax.inference import ReidEmbedder
  embedder = ReidEmbedder.from_workdir(args.workdir, args.step, model_name="fgra")
  config = embedder.config
  size = (config.data.height, config.data.width)
  paths = args.frames
  if paths is None:
    # pylint: disable-next=g-import-not-at-top
    from reidjax.data import datasets
    query = datasets.load_data(config.data)[0].query
    if not 0 <= args.tracklet < len(query):
      raise SystemExit(f"--tracklet {args.tracklet}: the query split has {len(query)} "
                       "tracklets.")
    paths = list(query.tracklets[args.tracklet][:config.data.clip_length])
  region_alignment_figure(embedder.model, embedder.variables, _load_frames(paths, size),
                          args.out, size=size)
  print(f"Wrote {args.out}")
  return args.out


if __name__ == "__main__":
  main()
