r"""CACE-Net's strongest cross-image edges of a query-gallery pair, as PNG.

Yu et al., 2020, Sec. 4.3.2 and Fig. 5: "crucial region pairs with highest
scores are visualized" as lines between the two images. The scores are the
cross-image block of the joint adjacency of Eq. 4,
A[:N, N:] = ReLU(S'_uv) = ReLU(X_u W' X_v^T) (N = h w positions of each
image's map), from ``CACENet.conditional_maps`` (paper variant; with
``model.adjacency`` other than ``"correspondence"`` it is that alignment's
block, e.g. Table 2's top-k similarity).

  python -m reidjax.viz.cacenet --workdir W --query q.jpg --gallery g.jpg \
      --out edges.png [--edges 10] [--step N]

Layout (pixels): a HEADER-high line, then two panels side by side, the
query at ``reidjax.viz.duatm.panel_origin(0, 0, cell)`` and the gallery
image at ``panel_origin(0, 1, cell)`` (frame FRAME wide, a TITLE-high strip
above each). Map position p of an (h, w) map covers the pixels
``reidjax.viz.duatm.position_box(p, (h, w), cell)`` of its panel; an edge
(i, j) is a line of EDGE_COLOR from the centre of query box i to the
centre of gallery box j (``edge_segment``), EDGE_WIDTH wide, with a dot
of radius DOT at each end. The strongest edge is drawn last (on top).
"""

from __future__ import annotations

import argparse
import functools
from typing import Any, Sequence

import jax
import numpy as np
from PIL import Image

from reidjax.viz.duatm import position_box
from reidjax.viz import panels
from reidjax.viz.panels import FRAME, panel_origin

EDGE_COLOR = (255, 0, 0)
EDGE_WIDTH = 3
DOT = 3
DEFAULT_EDGES = 10


def strongest_cross_edges(adjacency: Any, num_edges: int) -> list[tuple[int, int, float]]:
  """The ``num_edges`` largest positive entries of the u -> v block.

  Args:
    adjacency: (2N, 2N) joint adjacency, u's positions first.
    num_edges: how many edges (fewer if fewer entries are positive).

  Returns:
    [(i, j, weight)], i a query position, j a gallery position (0..N-1),
    strongest first; ties by (i, j) in row-major order.
  """
  a = np.asarray(adjacency, np.float64)
  if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] % 2:
    raise ValueError(f"adjacency must be a (2N, 2N) matrix, got shape {a.shape}.")
  if num_edges < 1:
    raise ValueError(f"num_edges must be >= 1, got {num_edges}.")
  n = a.shape[0] // 2
  cross = a[:n, n:].reshape(-1)
  order = np.argsort(-cross, kind="stable")[:num_edges]
  return [(int(k // n), int(k % n), float(cross[k])) for k in order if cross[k] > 0]


def edge_segment(edge: tuple[int, int, float], grid: tuple[int, int],
                 cell: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
  """Canvas (x, y) of the two ends of edge (i, j, w): the centre pixels
  (rounded down) of query box i and gallery box j (module doc layout)."""
  ends = []
  for col, position in ((0, edge[0]), (1, edge[1])):
    x, y = panel_origin(0, col, cell)
    x0, y0, x1, y1 = position_box(position, grid, cell)
    ends.append((x + FRAME + (x0 + x1 - 1) // 2, y + FRAME + (y0 + y1 - 1) // 2))
  return ends[0], ends[1]


def draw_cross_edges(query: Any, gallery: Any, grid: tuple[int, int],
                     edges: Sequence[tuple[int, int, float]], *,
                     cell: tuple[int, int] | None = None, note: str = "",
                     path: str | None = None) -> Image.Image:
  """Draws the two images and the edges between them (module doc layout).

  Args:
    query, gallery: uint8 RGB (H, W, 3) images (same size).
    grid: (h, w) of the feature map the positions index.
    edges: [(i, j, weight)], strongest first (``strongest_cross_edges``).
    cell: panel size (default: the image enlarged by an integer factor to at
      least MIN_CELL_WIDTH wide).
    note: text at the start of the header.
    path: if set, the PNG is written there.
  """
  query, gallery = panels.as_uint8_image(query, "query"), panels.as_uint8_image(gallery, "gallery")
  if query.shape != gallery.shape:
    raise ValueError(f"query and gallery must have the same size, got {query.shape} "
                     f"and {gallery.shape}.")
  n = grid[0] * grid[1]
  for i, j, _ in edges:
    if not (0 <= i < n and 0 <= j < n):
      raise ValueError(f"edge ({i}, {j}) is outside the {grid[0]} x {grid[1]} map.")
  cell = tuple(int(v) for v in (panels.default_cell(query) if cell is None else cell))
  header = ((f"{note} | " if note else "")
            + f"CACE-Net: {len(edges)} strongest cross-image edges of Eq. 4 "
            f"({grid[0]} x {grid[1]} map)")
  width, height = panels.grid_size(1, 2, cell)
  # The layout keeps a GAP right of the gallery panel.
  canvas = panels.PanelCanvas((panels.fit_width(width + panels.GAP, [header]), height),
                              cell, header)
  for col, (image, title) in enumerate(((query, "query"), (gallery, "gallery"))):
    canvas.put(0, col, panels.resize(image, cell), title)
  for edge in reversed(list(edges)):  # strongest on top
    start, end = edge_segment(edge, grid, cell)
    canvas.draw.line([start, end], fill=EDGE_COLOR, width=EDGE_WIDTH)
    for cx, cy in (start, end):
      canvas.draw.ellipse([cx - DOT, cy - DOT, cx + DOT, cy + DOT], fill=EDGE_COLOR)
  return canvas.finish(path)


@functools.partial(jax.jit, static_argnums=0)
def _joint_adjacency(model, variables, images):
  items = model.apply(variables, {"images": images}, method="embed")
  pick = lambda k: jax.tree.map(lambda t: t[k], items)
  return model.apply(variables, pick(0), pick(1), method="conditional_maps")["adjacency"]


def cross_image_adjacency(model: Any, variables: Any, query: Any, gallery: Any, *,
                          size: tuple[int, int] | None = None
                          ) -> tuple[tuple[int, int], np.ndarray]:
  """((h, w), A (2N, 2N)) of Eq. 4 for a query-gallery pair of uint8 images."""
  # pylint: disable-next=g-import-not-at-top
  from reidjax.inference import normalize_images
  if getattr(model, "variant", None) != "paper":
    raise ValueError("The edge figure draws Eq. 4's joint graph of the paper variant; "
                     f"this model is {type(model).__name__} with variant "
                     f"{getattr(model, 'variant', None)!r} (the official variant's "
                     "PairGraph has no Eq. 4 adjacency).")
  if model.pair_score != "conditional":
    model = model.clone(pair_score="conditional")
  query, gallery = panels.as_uint8_image(query, "query"), panels.as_uint8_image(gallery, "gallery")
  height, width = size if size is not None else query.shape[:2]
  images = normalize_images(np.stack([query, gallery]), height, width)
  grid = jax.eval_shape(lambda v, x: model.apply(v, {"images": x}, method="features"),
                        variables, images)["map"].shape[1:3]
  return (int(grid[0]), int(grid[1])), np.asarray(_joint_adjacency(model, variables, images))


def pair_edges_figure(model: Any, variables: Any, query: Any, gallery: Any,
                      path: str | None, *, size: tuple[int, int] | None = None,
                      num_edges: int = DEFAULT_EDGES,
                      cell: tuple[int, int] | None = None) -> Image.Image:
  """Runs a paper-variant CACE-Net on a pair and draws its strongest cross edges.

  Args:
    model, variables: a CACENet and its variables.
    query, gallery: uint8 RGB images (the model's input size or ``size``).
    path: where the PNG goes (None: not written).
    size: (height, width) the model takes; default: the query's own size.
    num_edges: how many edges.
    cell: panel size (see ``draw_cross_edges``).
  """
  query, gallery = panels.as_uint8_image(query, "query"), panels.as_uint8_image(gallery, "gallery")
  grid, adjacency = cross_image_adjacency(model, variables, query, gallery, size=size)
  edges = strongest_cross_edges(adjacency, num_edges)
  note = f"max {edges[0][2]:.3g}" if edges else "no positive cross-image edge"
  return draw_cross_edges(query, gallery, grid, edges, cell=cell, note=note, path=path)


def paper_figure(model: Any, variables: Any, data_config: Any, query: panels.Item,
                 gallery: panels.Item, path: str | None = None) -> Image.Image | None:
  """``reidjax.viz.paper_figure``'s entry: Fig. 5's edges of the pair at the
  model's input size; None for the official variant (no Eq. 4 graph)."""
  if getattr(model, "variant", None) != "paper":
    return None
  size = (data_config.height, data_config.width)
  return pair_edges_figure(model, variables, query.image(size), gallery.image(size), path,
                           size=size)


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(
      prog="python -m reidjax.viz.cacenet",
      description="Draws a trained CACE-Net's strongest cross-image edges of the joint "
                  "graph (Eq. 4) between a query and a gallery image (the paper's Fig. 5) "
                  "as a PNG.")
  parser.add_argument("--workdir", required=True,
                      help="train.py workdir holding the CACE-Net checkpoint.")
  parser.add_argument("--query", required=True, help="query image.")
  parser.add_argument("--gallery", required=True, help="gallery image.")
  parser.add_argument("--out", required=True, help="output PNG.")
  parser.add_argument("--edges", type=int, default=DEFAULT_EDGES,
                      help="how many edges to draw (strongest first).")
  parser.add_argument("--step", type=int, default=None,
                      help="checkpoint step (default: latest).")
  args = parser.parse_args(argv)
  # pylint: disable-next=g-import-not-at-top
  from reidjax.inference import ReidEmbedder
  embedder = ReidEmbedder.from_workdir(args.workdir, args.step, model_name="cacenet")
  size = (embedder.config.data.height, embedder.config.data.width)
  pair_edges_figure(embedder.model, embedder.variables, panels.load_image(args.query, size),
                    panels.load_image(args.gallery, size), args.out, size=size,
                    num_edges=args.edges)
  print(f"Wrote {args.out}")
  return args.out


if __name__ == "__main__":
  main()
