"""Evaluation reports: metrics JSON, CMC-curve PNG, ranked-list PNG.

* ``write_metrics_json``: ``RankingMetrics.to_dict()`` (CMC curve, mAP,
  mINP, valid / skipped query counts) plus any run information, as JSON.
* ``plot_cmc``: CMC curves (rank-k accuracy, k = 1..max_rank) of one or more
  results, matplotlib with the Agg backend (no display needed).
* ``ranked_list_image``: the torchreid-style "visualize ranked results" grid,
  drawn with PIL: one row per query, the query image first, then its top-k
  gallery items after the protocol's removal (same pid and camera), each
  framed green for a true match and red for a false one. For video, an item
  is a tracklet and its first frame is shown.

Ranked-list layout (pixels; every cell is ``cell`` = (h, w) plus a frame of
``FRAME`` on each side):

  x(col) = MARGIN + col * (w + 2 FRAME + GAP) + (QUERY_GAP if col > 0 else 0)
  y(row) = MARGIN + row * (h + 2 FRAME + LABEL + GAP)

col 0 is the query (framed ``QUERY_COLOR``), cols 1..k the ranked gallery;
below each cell a LABEL-high band holds its pid (and rank).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from reidjax.evaluate import metrics as metrics_lib

MARGIN, FRAME, GAP, QUERY_GAP, LABEL = 6, 4, 4, 12, 14
MATCH_COLOR = (0, 200, 0)
MISS_COLOR = (220, 0, 0)
QUERY_COLOR = (40, 40, 40)
BACKGROUND = (255, 255, 255)


def write_metrics_json(result: metrics_lib.RankingMetrics, path: str,
                       **extra: Any) -> dict[str, Any]:
  """Writes the metrics (and ``extra`` fields, e.g. protocol) to ``path``.

  Returns:
    The dict written: rank1/5/10, mAP, mINP, num_valid_queries,
    num_skipped_queries, cmc (the full curve), and ``extra``.
  """
  report = result.to_dict()
  report["num_queries"] = (report["num_valid_queries"]
                           + report["num_skipped_queries"])
  report.update(extra)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(report, f, indent=1, sort_keys=True)
  return report


def plot_cmc(results: Mapping[str, Any] | metrics_lib.RankingMetrics, path: str,
             *, max_rank: int | None = None, title: str = "CMC",
             size: tuple[float, float] = (5.0, 4.0), dpi: int = 100) -> str:
  """Plots CMC curves to a PNG.

  Args:
    results: a ``RankingMetrics``, or {label: RankingMetrics or (K,) curve}.
    path: output PNG.
    max_rank: plot ranks 1..max_rank (default: the longest curve).
    title: figure title.
    size: figure size in inches; the PNG is size * dpi pixels.
    dpi: resolution.

  Returns:
    path.
  """
  # The Agg canvas directly: no pyplot, the global backend is left alone.
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import MaxNLocator
  # pylint: enable=g-import-not-at-top

  if isinstance(results, metrics_lib.RankingMetrics):
    results = {"": results}
  curves = {}
  for label, r in results.items():
    curve = np.asarray(r.cmc if isinstance(r, metrics_lib.RankingMetrics)
                       else r, np.float64)
    if isinstance(r, metrics_lib.RankingMetrics):
      label = (f"{label} " if label else "") + (
          f"R1 {100 * curve[0]:.1f}%, mAP {100 * r.mAP:.1f}%")
    curves[label] = curve
  if not curves:
    raise ValueError("plot_cmc needs at least one result.")
  k = max_rank or max(c.size for c in curves.values())
  fig = Figure(figsize=size, dpi=dpi)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for label, curve in curves.items():
    ranks = np.arange(1, min(k, curve.size) + 1)
    ax.plot(ranks, 100 * curve[:ranks.size], marker="o" if k <= 20 else None,
            markersize=3, label=label)
  ax.set_xlabel("rank k")
  ax.set_ylabel("rank-k accuracy (%)")
  ax.set_xlim(1, max(k, 2))
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_ylim(0, 100)
  ax.grid(True, alpha=0.3)
  ax.set_title(title)
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path)
  return path


def _first_frame(item: str | Sequence[str]) -> str:
  if isinstance(item, (str, os.PathLike)):
    return os.fspath(item)
  return os.fspath(item[0])


def _load(item: str | Sequence[str] | np.ndarray,
          cell: tuple[int, int]) -> Image.Image:
  if isinstance(item, np.ndarray):
    image = Image.fromarray(np.asarray(item, np.uint8))
  else:
    image = Image.open(_first_frame(item))
  return image.convert("RGB").resize((cell[1], cell[0]), Image.BILINEAR)


def cell_origin(row: int, col: int, cell: tuple[int, int]) -> tuple[int, int]:
  """(x, y) of the top-left corner of a cell's frame (see module doc)."""
  h, w = cell
  x = MARGIN + col * (w + 2 * FRAME + GAP) + (QUERY_GAP if col > 0 else 0)
  y = MARGIN + row * (h + 2 * FRAME + LABEL + GAP)
  return x, y


def ranked_lists(distmat: np.ndarray, query_pids, gallery_pids, query_camids,
                 gallery_camids, top_k: int,
                 camera_filter: bool = True) -> list[np.ndarray]:
  """Per query row, the first ``top_k`` gallery indices of its ranking.

  Stable argsort (ties by gallery index); same pid + same camera items are
  dropped when ``camera_filter`` (the protocol's removal).
  """
  distmat = np.asarray(distmat)
  q_pids, g_pids = np.asarray(query_pids), np.asarray(gallery_pids)
  q_cam, g_cam = np.asarray(query_camids), np.asarray(gallery_camids)
  out = []
  for q in range(distmat.shape[0]):
    order = np.argsort(distmat[q], kind="stable")
    if camera_filter:
      keep = ~((g_pids[order] == q_pids[q]) & (g_cam[order] == q_cam[q]))
      order = order[keep]
    out.append(order[:top_k])
  return out


def ranked_list_image(query_items: Sequence[Any], gallery_items: Sequence[Any],
                      distmat: np.ndarray, query_pids, gallery_pids,
                      query_camids, gallery_camids, *,
                      query_indices: Sequence[int] | None = None,
                      top_k: int = 10, cell: tuple[int, int] = (128, 64),
                      camera_filter: bool = True,
                      path: str | None = None) -> Image.Image:
  """Draws ranked lists (see the module doc for the layout).

  Args:
    query_items, gallery_items: per item an image path, a sequence of frame
      paths (video: the first is shown) or an (H, W, 3) uint8 array.
    distmat: (Q, G) distances, or only the rows of ``query_indices`` (in
      that order).
    query_pids, query_camids: (Q,) labels; gallery_pids, gallery_camids: (G,).
    query_indices: the queries to draw (default: all).
    top_k: gallery items per row.
    cell: (h, w) of every thumbnail.
    camera_filter: drop same-pid same-camera items (the protocol).
    path: if set, the PNG is written there.

  Returns:
    The RGB image.
  """
  query_pids = np.asarray(query_pids)
  query_camids = np.asarray(query_camids)
  if query_indices is None:
    query_indices = range(len(query_items))
  query_indices = list(query_indices)
  distmat = np.asarray(distmat)
  if distmat.shape[0] == len(query_items):
    rows = distmat[query_indices]
  elif distmat.shape[0] == len(query_indices):
    rows = distmat
  else:
    raise ValueError(
        f"distmat has {distmat.shape[0]} rows: expected one per query "
        f"({len(query_items)}) or per drawn query ({len(query_indices)}).")
  lists = ranked_lists(rows, query_pids[query_indices], gallery_pids,
                       query_camids[query_indices], gallery_camids, top_k,
                       camera_filter)
  g_pids = np.asarray(gallery_pids)
  h, w = cell
  width = cell_origin(0, top_k + 1, cell)[0] - GAP + MARGIN
  height = cell_origin(len(query_indices), 0, cell)[1] - GAP + MARGIN
  canvas = Image.new("RGB", (width, height), BACKGROUND)
  draw = ImageDraw.Draw(canvas)

  def put(row, col, item, color, label):
    x, y = cell_origin(row, col, cell)
    draw.rectangle([x, y, x + w + 2 * FRAME - 1, y + h + 2 * FRAME - 1],
                   fill=color)
    canvas.paste(_load(item, cell), (x + FRAME, y + FRAME))
    draw.text((x + 1, y + h + 2 * FRAME + 1), label, fill=(0, 0, 0))

  for row, (q, ranked) in enumerate(zip(query_indices, lists)):
    put(row, 0, query_items[q], QUERY_COLOR, f"q {query_pids[q]}")
    for col, g in enumerate(ranked, start=1):
      match = g_pids[g] == query_pids[q]
      put(row, col, gallery_items[g], MATCH_COLOR if match else MISS_COLOR,
          f"{col}: {g_pids[g]}")
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
  return canvas
