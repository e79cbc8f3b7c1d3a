r"""Rank your own images with a trained model.

  python -m reidjax.search --workdir workdirs/baseline_synthetic \
      --query photo.jpg --gallery crops/ --top 10 --out ranked.png

Embeds the query and every image directly under the gallery folder (JPEG,
PNG, BMP, WebP; any size: each is resized to the run's data.height x
data.width, see ``reidjax.inference.load_images``) with the workdir's latest
(or ``--step``) checkpoint, ranks the gallery by the run's distance (the
config's ``eval.metric``; pair models: their pair distance over every
gallery item) and draws the query and its top ``--top`` gallery images, each
labelled with its rank, distance and file name. The ranking is also printed,
one ``rank distance path`` line per item.

Image models only (a video model takes clips, not photos). The images are
person crops as the model was trained on: no detector runs here.

Pose models (Attention-Driven ReID) cut their body parts from keypoints:
``--keypoints file.json`` is a keypoints file (``reidjax.data.keypoints``
format: file name -> 18 COCO-18 joints in that file's pixels) covering the
query and gallery images; ``reidjax.inference.pose_inputs`` then cuts the
parts as the evaluation pipeline does (Eq. 1-2). Images the file lacks, or
all of them without ``--keypoints``, get the four stripes, with a warning.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from reidjax import inference
from reidjax.models import interface
from reidjax.viz import report

# Frame of every gallery cell: unknown identities, so no match/miss colours.
RESULT_COLOR = (70, 110, 200)
# The label band below a cell holds two lines (rank + distance, file name).
LABEL_LINES = 2


def keypoints_of(table: Mapping[str, np.ndarray], paths: Sequence[str | os.PathLike],
                 source: str = "the keypoints file") -> np.ndarray:
  """(N, 18, 3) keypoints of ``paths`` by file name from ``table`` (file name ->
  (18, 3), ``reidjax.data.keypoints.read_keypoints_file``); images it lacks
  get no joints (hence the stripes), with a warning naming a few."""
  names = [os.path.basename(os.fspath(p)) for p in paths]
  missing = [n for n in names if n not in table]
  if missing:
    shown = ", ".join(repr(n) for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
    warnings.warn(f"{source} has no keypoints for {len(missing)} of the {len(names)} images "
                  f"({shown}): their part boxes are the four stripes.", stacklevel=2)
  empty = np.zeros((18, 3), np.float32)
  return np.stack([np.asarray(table.get(n, empty), np.float32) for n in names])


def search(embedder: inference.ReidEmbedder, query: str | np.ndarray,
           gallery: Sequence[str] | np.ndarray, *,
           keypoints: Mapping[str, np.ndarray] | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
  """Ranks ``gallery`` for ``query``.

  Args:
    embedder: a restored model (``reidjax.restore``).
    query: an image file, or one (H, W, 3) uint8 image.
    gallery: image files, or (G, H, W, 3) uint8 images.
    keypoints: pose models: file name -> (18, 3) joints in that file's pixels
      (module doc); the images must be files. None: the stripes (a warning).

  Returns:
    (order, distances): (G,) gallery indices nearest first (ties by index)
    and the (G,) distances in that order.
  """
  query_batch = [query] if isinstance(query, (str, os.PathLike)) else np.asarray(query)[None]
  fields_q, fields_g = {}, {}
  if keypoints is not None:
    if not set(interface.input_fields(embedder.model)) & set(inference.POSE_FIELDS):
      raise ValueError(f"keypoints were given, but this {embedder.config.model.name} model "
                       "takes no pose input; leave them out (--keypoints).")
    if isinstance(query_batch, np.ndarray) or isinstance(gallery, np.ndarray):
      raise ValueError("keypoints are matched by file name: pass image files, or call "
                       "embedder.embed(images, keypoints=(N, 18, 3)) for arrays.")
    fields_q = {"keypoints": keypoints_of(keypoints, query_batch)}
    fields_g = {"keypoints": keypoints_of(keypoints, gallery)}
  distances = embedder.distance(embedder.embed(query_batch, **fields_q),
                                embedder.embed(gallery, **fields_g))[0]
  order = np.argsort(distances, kind="stable")
  return order, distances[order]


def draw_ranking(query: Any, gallery: Sequence[Any], order: np.ndarray,
                 distances: np.ndarray, *, top: int = 10, cell: tuple[int, int] = (128, 64),
                 path: str | None = None) -> Image.Image:
  """The query then its first ``top`` gallery items, in ``report``'s ranked-list
  layout (one row), each labelled ``rank: distance`` and its file name."""
  h, w = cell
  shown = list(order[:top])
  label = report.LABEL * LABEL_LINES
  width = report.cell_origin(0, len(shown) + 1, cell)[0] - report.GAP + report.MARGIN
  height = 2 * report.MARGIN + h + 2 * report.FRAME + label
  canvas = Image.new("RGB", (width, height), report.BACKGROUND)
  draw = ImageDraw.Draw(canvas)

  def put(col, item, color, lines):
    x, y = report.cell_origin(0, col, cell)
    draw.rectangle([x, y, x + w + 2 * report.FRAME - 1, y + h + 2 * report.FRAME - 1],
                   fill=color)
    canvas.paste(report._load(item, cell), (x + report.FRAME, y + report.FRAME))  # pylint: disable=protected-access
    for i, text in enumerate(lines):
      draw.text((x + 1, y + h + 2 * report.FRAME + 1 + i * report.LABEL), text,
                fill=(0, 0, 0))

  def name(item):
    if isinstance(item, (str, os.PathLike)):
      base = os.path.basename(os.fspath(item))
      return base if len(base) <= 12 else base[:11] + "~"
    return ""

  put(0, query, report.QUERY_COLOR, ["query", name(query)])
  for col, (g, d) in enumerate(zip(shown, distances[:top]), start=1):
    put(col, gallery[g], RESULT_COLOR, [f"{col}: {d:.3g}", name(gallery[g])])
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
  return canvas


def _parse(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m reidjax.search",
                                   description="Rank a folder of person crops for a query.")
  parser.add_argument("--workdir", required=True, help="a trained run's workdir")
  parser.add_argument("--step", type=int, default=None, help="checkpoint (default: latest)")
  parser.add_argument("--query", required=True, help="the query image file")
  parser.add_argument("--gallery", required=True, help="folder of gallery images")
  parser.add_argument("--top", type=int, default=10, help="gallery items drawn")
  parser.add_argument("--out", default="ranked.png", help="the ranked-list PNG")
  parser.add_argument("--keypoints", default=None,
                      help="pose models: keypoints JSON of the query and gallery files "
                           "(reidjax.data.keypoints format); default: the stripes")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> str:
  args = _parse(sys.argv[1:] if argv is None else argv)
  if args.top < 1:
    raise SystemExit(f"--top must be >= 1, got {args.top}.")
  embedder = inference.restore(args.workdir, args.step)
  gallery = inference.list_images(args.gallery)
  table = None
  if args.keypoints:
    # pylint: disable-next=g-import-not-at-top
    from reidjax.data import keypoints as keypoints_lib
    table = keypoints_lib.read_keypoints_file(args.keypoints)
  order, distances = search(embedder, args.query, gallery, keypoints=table)
  for rank, (g, d) in enumerate(zip(order, distances), start=1):
    print(f"{rank:4d} {d:.6g} {gallery[g]}")
  draw_ranking(args.query, gallery, order, distances, top=args.top, path=args.out)
  print(f"ranked list: {args.out}", flush=True)
  return args.out


if __name__ == "__main__":
  main()
