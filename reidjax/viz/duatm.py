r"""DuATM's attention maps drawn over a query-gallery pair (its Fig. 8), as PNG.

Si et al., CVPR 2018, Sec. 3.2 and Fig. 8: for a position i of sequence a,
the intra-sequence weights softmax_m <q_a^i, x_a^m> (which positions of a
refine x_a^i) and the inter-sequence weights softmax_n <q_a^i, x_b^n> (which
positions of b form its aligned counterpart x_hat_b^i). The numbers come from
``reidjax.layers.dual_attention.attention_weights``.

  python -m reidjax.viz.duatm --workdir W --query q.jpg --gallery g.jpg \
      --out pair.png
  (video models: --query f1.jpg f2.jpg ... --gallery ..., frames in order)

Images (positions = cells of the backbone's last feature map, row-major):
position s of an (h, w) grid is cell (r, c) = (s // w, s % w), and on a
displayed image of H x W pixels it covers the pixel box

  x in [ceil(c W / w), ceil((c + 1) W / w)),  y in [ceil(r H / h), ceil((r + 1) H / h))

(``position_box``): the feature map tiles the image evenly, which is what
a stride-aligned map does up to its receptive field (the network sees more
than its cell). Weights are upsampled nearest, so each cell is one colour.

Image layout (pixels), one row per drawn position, three panels per row:
col 0 image a with position i outlined, col 1 the intra weights of i over
image a, col 2 its inter weights over image b. Every panel is ``cell`` =
(h, w) plus a frame of ``FRAME`` on each side (report.py's constants):

  x(col) = MARGIN + col * (w + 2 FRAME + GAP)
  y(row) = MARGIN + HEADER + row * (TITLE + h + 2 FRAME + GAP) + TITLE

(``panel_origin``, the frame's top-left corner; the canvas is widened
where a line of text is longer than the panels); a TITLE-high strip above
each row names the position, its local distance d_a^i (Eq. 4) and why it was
drawn ("largest d #k" / "smallest d #k" / "chosen"). Heatmaps colour
w / max(w) of that map with the monotone-lightness "inferno" map blended
over the image (alpha ``HEAT_ALPHA``), so (the image's own brightness aside)
the brightest cell is the most attended one; the title gives max(w). By
default the drawn positions are the 3 with the largest d_a^i and the 3 with
the smallest (fewer for short sequences).

Video layout (positions = frames): per drawn position i of clip a, a title
strip, then a row of a's frames (frame i outlined) each with a bar below of
height BAR * w / max(w) for the intra weight (in a BAR-high grey band), then
a row of b's frames with bars for the inter weights. Frame k of a row is a panel at
``panel_origin``-like x = MARGIN + k * (w + 2 FRAME + GAP); see
``video_panel_origin``.
"""

from __future__ import annotations

import argparse
import functools
import math
from typing import Any, Sequence

import jax
import numpy as np
from PIL import Image

from reidjax.layers.dual_attention import attention_weights
from reidjax.viz import panels
# The shared panel layout, also named here (this module documents it first).
from reidjax.viz.panels import (FRAME_COLOR, HEADER, MIN_CELL_WIDTH,  # noqa: F401
                                MIN_FRAME_WIDTH, TEXT_COLOR, TITLE, panel_origin)
from reidjax.viz.report import FRAME, GAP, MARGIN

BAR = 24
HEAT_ALPHA = 0.6
OUTLINE_COLOR = (0, 255, 255)
BAR_COLOR = (230, 120, 0)
BAR_BACKGROUND = (235, 235, 235)
NUM_EXTREMES = 3
# Wide enough for the video layout's titles however short the clips.
MIN_VIDEO_WIDTH = 420


def position_box(position: int, grid: tuple[int, int],
                 size: tuple[int, int]) -> tuple[int, int, int, int]:
  """(x0, y0, x1, y1), x1 / y1 exclusive, of ``position``'s pixels (module doc).

  Args:
    position: row-major index into the (h, w) ``grid``.
    grid: (h, w) of the feature map.
    size: (H, W) of the displayed image.
  """
  h, w = grid
  r, c = divmod(int(position), w)
  height, width = size
  return (math.ceil(c * width / w), math.ceil(r * height / h),
          math.ceil((c + 1) * width / w), math.ceil((r + 1) * height / h))


def _cell_of_pixels(count: int, cells: int) -> np.ndarray:
  """Cell index of every pixel along one axis, the boxes of ``position_box``."""
  # Pixel p is in cell k iff ceil(k N / n) <= p < ceil((k + 1) N / n), i.e.
  # k = floor(p n / N).
  return (np.arange(count) * cells) // count


def heatmap(weights: np.ndarray, grid: tuple[int, int],
            size: tuple[int, int]) -> np.ndarray:
  """(S,) weights -> (H, W) map, nearest upsampled (cell boxes of the doc)."""
  weights = np.asarray(weights, np.float32).reshape(grid)
  rows = _cell_of_pixels(size[0], grid[0])
  cols = _cell_of_pixels(size[1], grid[1])
  return weights[rows][:, cols]


def _colorize(values: np.ndarray) -> np.ndarray:
  """[0, 1] values -> uint8 RGB of the "inferno" colour map."""
  # pylint: disable-next=g-import-not-at-top
  from matplotlib import colormaps
  rgba = colormaps["inferno"](np.clip(values, 0.0, 1.0))
  return (255 * rgba[..., :3]).round().astype(np.uint8)


def overlay(image: np.ndarray, weights: np.ndarray,
            grid: tuple[int, int]) -> np.ndarray:
  """Blends the w / max(w) heatmap of (S,) ``weights`` over (H, W, 3) uint8."""
  weights = np.asarray(weights, np.float32)
  peak = float(weights.max())
  scaled = weights / peak if peak > 0 else weights
  heat = _colorize(heatmap(scaled, grid, image.shape[:2])).astype(np.float32)
  out = (1.0 - HEAT_ALPHA) * image.astype(np.float32) + HEAT_ALPHA * heat
  return out.round().clip(0, 255).astype(np.uint8)


def video_panel_origin(row: int, clip_row: int, frame: int,
                       cell: tuple[int, int]) -> tuple[int, int]:
  """(x, y) of a video-layout frame panel; clip_row 0 is a (intra), 1 is b.

  Each panel is the framed thumbnail followed by a BAR-high bar band.
  """
  h, w = cell
  block = TITLE + 2 * (h + 2 * FRAME + BAR + GAP)
  x = MARGIN + frame * (w + 2 * FRAME + GAP)
  y = (MARGIN + HEADER + row * (block + GAP) + TITLE
       + clip_row * (h + 2 * FRAME + BAR + GAP))
  return x, y


def _as_uint8(image: Any, name: str) -> np.ndarray:
  if isinstance(image, Image.Image):
    image = np.asarray(image.convert("RGB"))
  image = np.asarray(image)
  if image.shape[-1:] != (3,) or image.ndim not in (3, 4):
    raise ValueError(f"{name} must be an (H, W, 3) image or a (T, H, W, 3) "
                     f"clip of RGB values, got shape {image.shape}.")
  if image.dtype != np.uint8:
    raise ValueError(f"{name} must be uint8 RGB for display, got "
                     f"{image.dtype}; pass the images before normalisation.")
  return image


def _positions_to_draw(weights: dict[str, np.ndarray],
                       positions: Sequence[int] | None
                       ) -> list[tuple[int, str]]:
  """[(position, reason)]: given ones, else the extremes of d_a over valid i."""
  d_a, mask = weights["d_a"], weights["mask_a"]
  num = d_a.shape[0]
  if positions is not None:
    out = []
    for p in positions:
      if not 0 <= int(p) < num or not mask[int(p)]:
        raise ValueError(f"position {p} is not a valid position of sequence a "
                         f"(length {num}, {int(mask.sum())} valid).")
      out.append((int(p), "chosen"))
    return out
  valid = np.flatnonzero(mask)
  order = valid[np.argsort(-d_a[valid], kind="stable")]  # largest first
  num_large = min(NUM_EXTREMES, -(-valid.size // 2))
  num_small = min(NUM_EXTREMES, valid.size - num_large)
  out = [(int(p), f"largest d #{k + 1}") for k, p in enumerate(order[:num_large])]
  smallest = order[::-1][:num_small]
  out += [(int(p), f"smallest d #{k + 1}") for k, p in enumerate(smallest)]
  return out


def _check_weights(weights: dict[str, np.ndarray], len_a: int, len_b: int):
  expected = {"intra_a": (len_a, len_a), "inter_a": (len_a, len_b),
              "d_a": (len_a,), "mask_a": (len_a,)}
  for key, shape in expected.items():
    if key not in weights:
      raise ValueError(f"weights lacks {key!r}; pass the dict of "
                       "layers.dual_attention.attention_weights.")
    if weights[key].shape != shape:
      raise ValueError(f"weights[{key!r}] has shape {weights[key].shape}, but "
                       f"the inputs and grid give {shape}.")


def draw_pair_attention(image_a: Any, image_b: Any, weights: dict[str, Any],
                        grid: tuple[int, int] | None, *,
                        positions: Sequence[int] | None = None,
                        cell: tuple[int, int] | None = None,
                        note: str = "",
                        path: str | None = None) -> Image.Image:
  """Draws DuATM's attention of chosen positions of a (module doc layouts).

  Args:
    image_a, image_b: uint8 RGB (H, W, 3) images (or PIL images), or for a
      video model (T, H, W, 3) clips whose frames are the positions.
    weights: ``attention_weights`` output for the pair (arrays or NumPy).
    grid: (h, w) of the feature map for images, h * w = S; None for clips.
    positions: positions i of a to draw (default: the NUM_EXTREMES with the
      largest local distance d_a^i and the NUM_EXTREMES with the smallest).
    cell: (h, w) of every drawn image or frame (default: a's size, enlarged
      by an integer factor to at least MIN_CELL_WIDTH wide, MIN_FRAME_WIDTH
      for clips).
    note: text put at the start of the header line.
    path: if set, the PNG is written there.

  Returns:
    The RGB image.
  """
  image_a, image_b = _as_uint8(image_a, "image_a"), _as_uint8(image_b, "image_b")
  weights = {k: np.asarray(v) for k, v in weights.items()}
  video = image_a.ndim == 4
  if image_b.ndim != image_a.ndim:
    raise ValueError(f"image_a {image_a.shape} and image_b {image_b.shape} "
                     "must both be images or both clips.")
  if video:
    if grid is not None:
      raise ValueError(f"grid must be None for clips (positions are frames), "
                       f"got {grid}.")
    len_a, len_b = image_a.shape[0], image_b.shape[0]
  else:
    if grid is None or len(grid) != 2:
      raise ValueError(f"grid must be the (h, w) of the feature map for "
                       f"images, got {grid}.")
    grid = (int(grid[0]), int(grid[1]))
    len_a = len_b = grid[0] * grid[1]
  _check_weights(weights, len_a, len_b)
  cell = tuple(cell) if cell is not None else panels.default_cell(
      image_a, MIN_FRAME_WIDTH if video else MIN_CELL_WIDTH)
  drawn = _positions_to_draw(weights, positions)
  if video:
    canvas = _draw_video(image_a, image_b, weights, drawn, cell, note)
  else:
    canvas = _draw_images(image_a, image_b, weights, drawn, grid, cell, note)
  return canvas.finish(path)


def _title(weights, position, reason, where=""):
  return (f"{reason}: i={position}{where} d={weights['d_a'][position]:.4g} "
          f"| max intra {weights['intra_a'][position].max():.2f}, "
          f"max inter {weights['inter_a'][position].max():.2f}")


def _header(weights, note) -> str:
  text = f"{note} | " if note else ""
  if "distance" in weights:
    return text + f"pair distance {float(weights['distance']):.4g}"
  return text + "DuATM"


def _draw_images(image_a, image_b, weights, drawn, grid, cell,
                 note) -> panels.PanelCanvas:
  a, b = panels.resize(image_a, cell), panels.resize(image_b, cell)
  header = _header(weights, note) + " | a (i outlined) | intra a | inter a->b"
  titles = [_title(weights, p, reason, " (r%d c%d)" % divmod(p, grid[1]))
            for p, reason in drawn]
  width, height = panels.grid_size(len(drawn), 3, cell)
  canvas = panels.PanelCanvas((panels.fit_width(width, [header] + titles), height), cell,
                              header)
  for row, ((position, _), title) in enumerate(zip(drawn, titles)):
    x0, y0 = canvas.put(row, 0, a, title)
    bx0, by0, bx1, by1 = position_box(position, grid, cell)
    canvas.draw.rectangle([x0 + bx0, y0 + by0, x0 + bx1 - 1, y0 + by1 - 1],
                          outline=OUTLINE_COLOR, width=2)
    canvas.put(row, 1, overlay(a, weights["intra_a"][position], grid))
    canvas.put(row, 2, overlay(b, weights["inter_a"][position], grid))
  return canvas


def _draw_video(clip_a, clip_b, weights, drawn, cell, note) -> panels.PanelCanvas:
  h, w = cell
  frames = max(clip_a.shape[0], clip_b.shape[0])
  header = (_header(weights, note)
            + " | clip a: intra bars / clip b: inter a->b bars")
  titles = [_title(weights, p, reason) for p, reason in drawn]
  width = panels.fit_width(max(video_panel_origin(0, 0, frames, cell)[0] - GAP
                               + MARGIN, MIN_VIDEO_WIDTH), [header] + titles)
  last_row_y = video_panel_origin(len(drawn) - 1, 1, 0, cell)[1]
  height = last_row_y + h + 2 * FRAME + BAR + MARGIN
  canvas = panels.PanelCanvas((width, height), cell, header)
  draw = canvas.draw
  thumbs = [[panels.resize(f, cell) for f in clip] for clip in (clip_a, clip_b)]
  for row, ((position, _), title) in enumerate(zip(drawn, titles)):
    canvas.title(video_panel_origin(row, 0, 0, cell), title)
    for clip_row, key in enumerate(("intra_a", "inter_a")):
      values = weights[key][position]
      peak = float(values.max())
      for k, thumb in enumerate(thumbs[clip_row]):
        x, y = video_panel_origin(row, clip_row, k, cell)
        outlined = clip_row == 0 and k == position
        canvas.put_at((x, y), thumb, OUTLINE_COLOR if outlined else FRAME_COLOR)
        bar = round(BAR * values[k] / peak) if peak > 0 else 0
        bottom = y + h + 2 * FRAME + BAR - 1
        draw.rectangle([x + FRAME, bottom - BAR + 1, x + FRAME + w - 1, bottom],
                       fill=BAR_BACKGROUND)
        if bar > 0:
          draw.rectangle([x + FRAME, bottom - bar + 1, x + FRAME + w - 1, bottom],
                         fill=BAR_COLOR)
  return canvas


def _normalize(image: np.ndarray, size: tuple[int, int] | None):
  """uint8 image (H, W, 3) or clip (T, H, W, 3) -> the model's (1, ...) input."""
  # Imported here: reidjax.inference pulls in checkpointing, which drawing
  # from precomputed weights does not need.
  # pylint: disable-next=g-import-not-at-top
  from reidjax.inference import normalize_images
  frames = image[None] if image.ndim == 3 else image
  height, width = size if size is not None else frames.shape[1:3]
  x = normalize_images(frames, height, width)
  return x if image.ndim == 3 else x[None]


def pair_attention_figure(model: Any, variables: Any, image_a: Any,
                          image_b: Any, path: str | None, *,
                          size: tuple[int, int] | None = None,
                          positions: Sequence[int] | None = None,
                          cell: tuple[int, int] | None = None) -> Image.Image:
  """Runs a DuATM model on a pair and draws its attention (``draw_pair_attention``).

  Args:
    model: a ``reidjax.models.duatm.DuATM`` (image or video).
    variables: its variables ({"params", "batch_stats"}).
    image_a, image_b: uint8 RGB (H, W, 3) images, or (T, H, W, 3) clips for
      a video model (a and b may have different lengths).
    path: where the PNG goes (None: not written).
    size: (height, width) the model takes (the config's data.height /
      data.width); default: the inputs' own size.
    positions, cell: as for ``draw_pair_attention``.

  Returns:
    The RGB image.
  """
  image_a, image_b = _as_uint8(image_a, "image_a"), _as_uint8(image_b, "image_b")
  video = bool(getattr(model, "video", False))
  if (image_a.ndim == 4) != video or (image_b.ndim == 4) != video:
    raise ValueError(
        f"This is {'a video' if video else 'an image'} model: pass "
        f"{'(T, H, W, 3) clips' if video else '(H, W, 3) images'}, got "
        f"{image_a.shape} and {image_b.shape}.")
  intra, inter = model.apply(
      variables, method=lambda m: (m.matcher.intra, m.matcher.inter))

  # One item at a time: a and b may be clips of different lengths, and in
  # inference BatchNorm uses running statistics, so batching changes nothing.
  inputs_a, inputs_b = _normalize(image_a, size), _normalize(image_b, size)
  items_a = _prepare(model, variables, inputs_a)
  items_b = _prepare(model, variables, inputs_b)
  weights = attention_weights(items_a, items_b, 0, 0, intra=intra)
  grid = None
  if not video:
    grid_a, grid_b = (_feature_grid(model, variables, x)
                      for x in (inputs_a, inputs_b))
    if grid_a != grid_b:
      raise ValueError(f"a and b give feature maps {grid_a} and {grid_b}; "
                       "pass size= so both are resized alike.")
    grid = grid_a
  # Without the inter attention the model compares pooled vectors: the maps
  # and d are still drawn, flagged as not what the model's distance uses.
  note = "" if inter else "NO ALIGNMENT in this model: inter maps, d unused"
  return draw_pair_attention(image_a, image_b, weights, grid,
                             positions=positions, cell=cell, note=note,
                             path=path)


# Jitted whole, one program per model and input shape (Flax modules hash by
# their fields): for a small model on CPU compiling it is several times
# faster than running its ops eagerly, and repeated figures reuse it.
@functools.partial(jax.jit, static_argnums=0)
def _prepare(model, variables, inputs):
  """Model inputs (1, ...) -> the matcher's ``SequenceItems``."""
  x, mask = model.apply(variables, inputs, method="sequence")
  return model.apply(variables, x, mask,
                     method=lambda m, x, mask: m.matcher.prepare(x, mask))


def _feature_grid(model, variables, inputs) -> tuple[int, int]:
  """(h, w) of the backbone map the image sequence is read from (shapes only)."""
  shape = jax.eval_shape(
      lambda v, x: model.apply(
          v, x, method=lambda m, x: m.backbone(x, train=False)[m.feature_key]),
      variables, inputs).shape
  return int(shape[1]), int(shape[2])


def paper_figure(model: Any, variables: Any, data_config: Any, query: panels.Item,
                 gallery: panels.Item, path: str | None = None) -> Image.Image:
  """``reidjax.viz.paper_figure``'s entry: Fig. 8 of the pair at the model's input
  size (video: the first ``data.clip_length`` frames of each tracklet)."""
  size = (data_config.height, data_config.width)
  if getattr(model, "video", False):
    length = data_config.get("clip_length", None)
    a, b = query.clip(size, length), gallery.clip(size, length)
  else:
    a, b = query.image(size), gallery.image(size)
  return pair_attention_figure(model, variables, a, b, path, size=size)


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(
      prog="python -m reidjax.viz.duatm",
      description="Draws a trained DuATM's intra / inter attention over a "
                  "query-gallery pair (the paper's Fig. 8) as a PNG.")
  parser.add_argument("--workdir", required=True,
                      help="train.py workdir holding the DuATM checkpoint.")
  parser.add_argument("--query", required=True, nargs="+",
                      help="query image (video model: its frames, in order).")
  parser.add_argument("--gallery", required=True, nargs="+",
                      help="gallery image (video model: its frames, in order).")
  parser.add_argument("--out", required=True, help="output PNG.")
  parser.add_argument("--step", type=int, default=None,
                      help="checkpoint step (default: latest).")
  parser.add_argument("--positions", type=int, nargs="*", default=None,
                      help="query positions to draw (default: the 3 largest "
                           "and 3 smallest local distances).")
  args = parser.parse_args(argv)
  # pylint: disable-next=g-import-not-at-top
  from reidjax.inference import ReidEmbedder
  embedder = ReidEmbedder.from_workdir(args.workdir, args.step, model_name="duatm")
  config = embedder.config
  size = (config.data.height, config.data.width)
  video = bool(config.model.get("video", False))
  images = []
  for name, paths in (("--query", args.query), ("--gallery", args.gallery)):
    if not video and len(paths) != 1:
      raise ValueError(f"{name}: an image model takes one image, got "
                       f"{len(paths)} paths.")
    frames = panels.load_images(paths, size)
    images.append(frames if video else frames[0])
  pair_attention_figure(embedder.model, embedder.variables, images[0],
                        images[1], args.out, size=size,
                        positions=args.positions)
  print(f"Wrote {args.out}")
  return args.out


if __name__ == "__main__":
  main()
