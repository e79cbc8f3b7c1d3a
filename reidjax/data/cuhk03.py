"""CUHK03 under the 767/700 protocol ("CUHK03-NP", Zhong et al., CVPR 2017).

Reads the split of Zhong et al. (`cuhk03_new_protocol_config_{labeled,
detected}.mat`, MATLAB v5: `train_idx`, `query_idx`, `gallery_idx` (1-based
rows), `labels`, `filelist`, `camId`) and the images it names, either
pre-extracted PNGs under `images_{labeled,detected}/` or the raw release
`cuhk-03.mat` (Li et al., CVPR 2014; MATLAB v7.3 = HDF5, read with h5py),
from which the PNGs are extracted once.

Evaluation: the 767/700 split is scored like Market-1501 (gallery items of
the query's identity seen by the query's camera are ignored), i.e. the
evaluator protocol "market1501". The old 20-split 1367/100 protocol, scored
with single-gallery-shot CMC, is the evaluator protocol "cuhk03"; its splits
are not produced here.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import scipy.io

from reidjax.data.index import ImageDataset, ImageSplit
from reidjax.data.layout_common import (DatasetNotFoundError, LayoutError,
                                        Stats, candidate_roots,
                                        check_statistics, contiguous_labels)

_log = logging.getLogger(__name__)

CUHK03_VARIANTS = ("labeled", "detected")
CUHK03_ARCHIVE_DIRS = ("cuhk03", "CUHK03")
CUHK03_RAW_MAT = "cuhk-03.mat"
# Folder of the official cuhk03_release.zip, which holds cuhk-03.mat.
CUHK03_RELEASE_DIR = "cuhk03_release"
CUHK03_CONFIG_KEYS = ("train_idx", "query_idx", "gallery_idx", "labels",
                      "filelist", "camId")

# <camera pair>_<person in pair:03d>_<view 1|2>_<image slot 01..10>.png, e.g.
# 1_001_1_01.png; slots 1-5 are view 1, slots 6-10 view 2.
_CUHK03_NAME = re.compile(
    r"^(?P<pair>\d)_(?P<pid>\d{3})_(?P<view>[12])_(?P<slot>\d{2})\.png$")
_CUHK03_FORMAT = "P_NNN_V_SS.png (e.g. 1_001_1_01.png)"

# Official (ids, images) per split (Zhong et al., CUHK03-NP README).
CUHK03_LABELED_STATS: Stats = {
    "train": (767, 7368), "query": (700, 1400), "gallery": (700, 5328)}
CUHK03_DETECTED_STATS: Stats = {
    "train": (767, 7365), "query": (700, 1400), "gallery": (700, 5332)}
CUHK03_STATS = {"labeled": CUHK03_LABELED_STATS,
                "detected": CUHK03_DETECTED_STATS}

CUHK03_HELP = f"""\
Expected layout (directly under the root, or under <root>/cuhk03/):
  <root>/
    cuhk03_new_protocol_config_labeled.mat    767/700 split (labeled boxes)
    cuhk03_new_protocol_config_detected.mat   767/700 split (detected boxes)
    images_labeled/   1_001_1_01.png ...      extracted images, or
    images_detected/                          (written from cuhk-03.mat)
    cuhk03_release/{CUHK03_RAW_MAT}  (or <root>/{CUHK03_RAW_MAT})
Image names: {_CUHK03_FORMAT}:
  camera pair, person within the pair, view (= camera, 1 or 2), slot 01..10.
To get the data: cuhk03_release.zip (holding {CUHK03_RAW_MAT}) from the CUHK03
page of Li et al., CVPR 2014
(www.ee.cuhk.edu.hk/~xgwang/CUHK_identification.html), and the two config
.mat files from github.com/zhunzhong07/person-re-ranking
(evaluation/data/CUHK03/). Unzip into one folder and point
--config.data.root at it; the images are extracted from {CUHK03_RAW_MAT} into
images_<variant>/ on first use (pre-extracted images_<variant>/ folders, as
written by torchreid, are used as they are)."""


def _config_path(base: str, variant: str) -> str:
  return os.path.join(base, f"cuhk03_new_protocol_config_{variant}.mat")


def _raw_mat_candidates(base: str) -> list[str]:
  return [os.path.join(base, CUHK03_RELEASE_DIR, CUHK03_RAW_MAT),
          os.path.join(base, CUHK03_RAW_MAT)]


def _resolve_cuhk03_root(root: str, variant: str) -> str:
  """Returns the folder (root or root/cuhk03) holding the variant's config."""
  candidates = candidate_roots(root, label="CUHK03",
                               archive_dirs=CUHK03_ARCHIVE_DIRS,
                               help_text=CUHK03_HELP)
  for cand in candidates:
    if os.path.isfile(_config_path(cand, variant)):
      return cand
  raise DatasetNotFoundError(
      f"CUHK03 root {root!r} has no "
      f"{os.path.basename(_config_path(root, variant))!r} (looked in "
      f"{', '.join(map(repr, candidates))}).\n{CUHK03_HELP}")


def _read_config(path: str) -> dict[str, np.ndarray]:
  """Loads and checks one protocol config .mat.

  Returns:
    filelist (N,) str, labels (N,) int64, camId (N,) int64, and the 0-based
    row indices train_idx / query_idx / gallery_idx.
  """
  try:
    mat = scipy.io.loadmat(path, simplify_cells=True)
  except (ValueError, NotImplementedError, OSError) as e:
    raise LayoutError(
        f"Cannot read {path!r} as a MATLAB v5 .mat file ({e}). Replace it "
        "with the original file from zhunzhong07/person-re-ranking.") from e
  missing = [k for k in CUHK03_CONFIG_KEYS if k not in mat]
  if missing:
    raise LayoutError(
        f"{path!r} lacks the variable(s) {', '.join(missing)}; a 767/700 "
        f"protocol config holds {', '.join(CUHK03_CONFIG_KEYS)}.")
  filelist = np.asarray([str(f) for f in np.atleast_1d(mat["filelist"])])
  n = filelist.size
  out = {"filelist": filelist}
  for k in ("labels", "camId"):
    v = np.atleast_1d(mat[k]).astype(np.int64)
    if v.shape != (n,):
      raise LayoutError(
          f"{path!r}: {k} has {v.size} entries but filelist has {n}.")
    out[k] = v
  bad_cam = np.flatnonzero(~np.isin(out["camId"], (1, 2)))
  if bad_cam.size:
    raise LayoutError(
        f"{path!r}: camId[{bad_cam[0] + 1}] = {out['camId'][bad_cam[0]]}; "
        "CUHK03 cameras are 1 and 2.")
  for k in ("train_idx", "query_idx", "gallery_idx"):
    idx = np.atleast_1d(mat[k]).astype(np.int64)
    if idx.ndim != 1 or not idx.size:
      raise LayoutError(f"{path!r}: {k} is empty or not a vector.")
    if idx.min() < 1 or idx.max() > n:
      bad = idx.min() if idx.min() < 1 else idx.max()
      raise LayoutError(
          f"{path!r}: {k} holds row {bad}, outside the 1-based range 1..{n} "
          "of filelist.")
    if np.unique(idx).size != idx.size:
      raise LayoutError(f"{path!r}: {k} lists a row more than once.")
    out[k] = idx - 1
  # A mixed-up config (test rows in train, a query also in the gallery)
  # would silently inflate every score.
  for a, b in (("train_idx", "query_idx"), ("train_idx", "gallery_idx"),
               ("query_idx", "gallery_idx")):
    both = np.intersect1d(out[a], out[b])
    if both.size:
      raise LayoutError(
          f"{path!r}: {a} and {b} share row {both[0] + 1} "
          f"({str(filelist[both[0]])!r}); the splits must be disjoint.")
  for i, f in enumerate(filelist.tolist()):
    if _CUHK03_NAME.match(f) is None:
      raise LayoutError(
          f"{path!r}: filelist[{i + 1}] = {f!r} does not match the CUHK03 "
          f"pattern {_CUHK03_FORMAT}.")
  return out


def extract_cuhk03_images(raw_mat: str, variant: str, out_dir: str) -> int:
  """Writes every image of one variant of `cuhk-03.mat` as a PNG.

  `cuhk-03.mat` (MATLAB v7.3, read with h5py) holds, per variant, a cell of
  camera pairs; each pair is a (persons, 10) cell of (H, W, 3) uint8 images,
  slots 1-5 seen by camera 1 and 6-10 by camera 2, with empty cells where a
  person has fewer images. Image (pair p, person n, slot s) is written as
  ``{p}_{n:03d}_{view}_{s:02d}.png`` (all 1-based), the names used by the
  protocol configs. Files already present are left alone, and each file is
  written under a temporary name first, so an interrupted run can resume.

  Args:
    raw_mat: path of cuhk-03.mat.
    variant: "labeled" or "detected".
    out_dir: folder for the PNGs (created if needed).

  Returns:
    The number of PNGs written now.
  """
  import h5py  # Only needed for this one-time extraction.
  from PIL import Image

  os.makedirs(out_dir, exist_ok=True)
  written = 0
  try:
    mat = h5py.File(raw_mat, "r")
  except OSError as e:
    raise LayoutError(
        f"Cannot open {raw_mat!r} as an HDF5 (MATLAB v7.3) file ({e}). "
        "Replace it with the cuhk-03.mat of the official cuhk03_release.zip."
    ) from e
  with mat:
    if variant not in mat:
      raise LayoutError(
          f"{raw_mat!r} has no {variant!r} cell; the CUHK03 release holds "
          "'labeled' and 'detected'.")
    for p, pair_ref in enumerate(np.ravel(mat[variant][()])):
      # MATLAB stores arrays column-major: transpose to (persons, 10) and
      # each image to (H, W, 3).
      slots = mat[pair_ref][()].T
      for n in range(slots.shape[0]):
        for s in range(slots.shape[1]):
          image = mat[slots[n, s]][()]
          if image.ndim != 3 or image.size == 0:
            continue  # An empty cell: this person has no image in the slot.
          view = 1 if s < 5 else 2
          name = f"{p + 1}_{n + 1:03d}_{view}_{s + 1:02d}.png"
          path = os.path.join(out_dir, name)
          if os.path.exists(path):
            continue
          tmp = os.path.join(out_dir, f".{name}.tmp")
          Image.fromarray(np.ascontiguousarray(image.T, np.uint8)).save(
              tmp, format="PNG")
          os.replace(tmp, path)
          written += 1
  return written


def _ensure_images(base: str, variant: str, names: list[str]) -> str:
  """Returns images_<variant>/ holding every name; extracts them if needed."""
  image_dir = os.path.join(base, f"images_{variant}")

  def missing():
    return [n for n in names if not os.path.isfile(os.path.join(image_dir, n))]

  absent = missing()
  if not absent:
    return image_dir
  raw = next((m for m in _raw_mat_candidates(base) if os.path.isfile(m)), None)
  if raw is None:
    raise DatasetNotFoundError(
        f"CUHK03 folder {base!r}: {len(absent)} of the {len(names)} {variant} "
        f"images the config names are not in {image_dir!r} (first: "
        f"{absent[0]!r}), and there is no {CUHK03_RAW_MAT} to extract them "
        f"from (looked for {', '.join(map(repr, _raw_mat_candidates(base)))})."
        f"\n{CUHK03_HELP}")
  _log.info("CUHK03: extracting the %s images from %s into %s (once; later "
            "runs read the PNGs).", variant, raw, image_dir)
  written = extract_cuhk03_images(raw, variant, image_dir)
  _log.info("CUHK03: wrote %d %s images to %s.", written, variant, image_dir)
  absent = missing()
  if absent:
    raise LayoutError(
        f"{raw!r} has no {variant} image for {len(absent)} file(s) the "
        f"protocol config names (first: {absent[0]!r}); the config and "
        f"{CUHK03_RAW_MAT} do not belong together.")
  return image_dir


def parse_cuhk03(root: str, *, name: str = "cuhk03",
                 variant: str = "labeled") -> ImageDataset:
  """Indexes CUHK03 under the 767/700 protocol of Zhong et al. (CVPR 2017).

  Folder tree (directly under `root`, or under `root`/cuhk03/)::

    cuhk03/
      cuhk03_new_protocol_config_labeled.mat   (767/700 split, labeled boxes)
      cuhk03_new_protocol_config_detected.mat  (767/700 split, detected boxes)
      images_labeled/1_001_1_01.png ...        (extracted once; see below)
      images_detected/...
      cuhk03_release/cuhk-03.mat               (or cuhk-03.mat in the root)

  The config lists every image (`filelist`, names P_NNN_V_SS.png) with its
  identity (`labels`) and camera (`camId`, 1 or 2), and 1-based rows of the
  train / query / gallery sets. Images are read from images_<variant>/; if
  any are missing there and cuhk-03.mat exists, the variant's images are
  extracted from it once (see `extract_cuhk03_images`), which is logged.

  Train pids are relabelled 0..P-1 in sorted order of `labels`; query and
  gallery keep `labels`; camids are `camId` - 1. Items keep the config's row
  order. Evaluate with the Market-style protocol ("market1501"): the old
  1367/100 CUHK03 protocol ("cuhk03" in the evaluator) is a different split.
  A complete copy is checked against `CUHK03_STATS[variant]`.

  Args:
    root: the CUHK03 folder.
    name: dataset name recorded in the index.
    variant: "labeled" (hand-drawn boxes) or "detected" (DPM boxes).

  Raises:
    ValueError: unknown variant.
    DatasetNotFoundError: root, the config, or images (with no cuhk-03.mat to
      extract them from) are missing.
    LayoutError: a config or cuhk-03.mat does not have the expected content.
    StatisticsError: a complete-looking copy has the wrong counts.
  """
  if variant not in CUHK03_VARIANTS:
    raise ValueError(
        f"CUHK03 variant {variant!r} is not one of {CUHK03_VARIANTS}.")
  base = _resolve_cuhk03_root(os.fspath(root), variant)
  config = _read_config(_config_path(base, variant))
  rows = np.concatenate([config["train_idx"], config["query_idx"],
                         config["gallery_idx"]])
  image_dir = _ensure_images(base, variant, config["filelist"][rows].tolist())

  def split(idx, relabel):
    pids = config["labels"][idx]
    if relabel:
      pids = contiguous_labels(pids)
    return ImageSplit(
        paths=tuple(os.path.join(image_dir, f)
                    for f in config["filelist"][idx].tolist()),
        pids=pids.astype(np.int32),
        camids=(config["camId"][idx] - 1).astype(np.int32))

  ds = ImageDataset(name=name, root=base,
                    train=split(config["train_idx"], True),
                    query=split(config["query_idx"], False),
                    gallery=split(config["gallery_idx"], False))
  check_statistics(ds, CUHK03_STATS[variant])
  return ds
