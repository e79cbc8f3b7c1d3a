"""CUHK03: the 767/700 protocol ("CUHK03-NP", Zhong et al., CVPR 2017) and
the classic 1,367/100 splits (Li et al., CVPR 2014).

Reads the split of Zhong et al. (`cuhk03_new_protocol_config_{labeled,
detected}.mat`, MATLAB v5: `train_idx`, `query_idx`, `gallery_idx` (1-based
rows), `labels`, `filelist`, `camId`) and the images it names, either
pre-extracted PNGs under `images_{labeled,detected}/` or the raw release
`cuhk-03.mat` (Li et al., CVPR 2014; MATLAB v7.3 = HDF5, read with h5py),
from which the PNGs are extracted once.

Evaluation: the 767/700 split is scored like Market-1501 (gallery items of
the query's identity seen by the query's camera are ignored), i.e. the
evaluator protocol "market1501".

The classic protocol (``split="classic"``; Attention-Driven ReID's CUHK03
figures use it): `cuhk-03.mat`'s ``testsets`` holds 20 random splits, each
100 test persons as (camera pair, person) rows; split ``classic_split``
(0-based, default 0 = the first) tests on those 100 persons and trains on the
other 1,367. As in torchreid's classic CUHK03, query and gallery are both
all images of the test persons (the same split object), scored with the
evaluator protocol "cuhk03" (single-gallery-shot CMC; the camera filter
drops an image's own camera, itself included). It needs only cuhk-03.mat
(the images are extracted from it as for 767/700), not the 767/700 configs.
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
  # Any failure to read a user's file is a bad file (a truncated one raises
  # IndexError deep inside scipy), not a traceback.
  except Exception as e:  # pylint: disable=broad-except
    raise LayoutError(
        f"Cannot read {path!r} as a MATLAB v5 .mat file ({e}). Replace it "
        "with the original file from zhunzhong07/person-re-ranking.") from e
  missing = [k for k in CUHK03_CONFIG_KEYS if k not in mat]
  if missing:
    raise LayoutError(
        f"{path!r} lacks the variable(s) {', '.join(missing)}; a 767/700 "
        f"protocol config holds {', '.join(CUHK03_CONFIG_KEYS)}. Replace it "
        "with the original file from zhunzhong07/person-re-ranking "
        "(evaluation/data/CUHK03/).")
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
  from PIL import Image

  os.makedirs(out_dir, exist_ok=True)
  written = 0
  with _open_raw(raw_mat) as mat:
    if variant not in mat:
      raise LayoutError(
          f"{raw_mat!r} has no {variant!r} cell; the CUHK03 release holds "
          "'labeled' and 'detected'. Replace it with the cuhk-03.mat of the "
          "official cuhk03_release.zip.")
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


CUHK03_SPLITS = ("767/700", "classic")
CUHK03_CLASSIC_SPLITS = 20
CUHK03_CLASSIC_TEST_IDS = 100
CUHK03_PERSONS = 1467  # Identities of the full release.


def _open_raw(raw_mat: str):
  import h5py  # Only needed to read cuhk-03.mat.
  try:
    return h5py.File(raw_mat, "r")
  except OSError as e:
    raise LayoutError(
        f"Cannot open {raw_mat!r} as an HDF5 (MATLAB v7.3) file ({e}). "
        "Replace it with the cuhk-03.mat of the official cuhk03_release.zip."
    ) from e


def read_classic_split(raw_mat: str, variant: str, index: int
                       ) -> tuple[list[tuple[int, int, str]], set]:
  """Images of one variant and the test persons of classic split ``index``.

  Returns:
    ([(pair, person, file name)] of every image, in (pair, person, slot)
    order, all 1-based), and the set of (pair, person) test persons.
  """
  with _open_raw(raw_mat) as mat:
    for key in (variant, "testsets"):
      if key not in mat:
        raise LayoutError(
            f"{raw_mat!r} has no {key!r} variable; the CUHK03 release holds "
            "'labeled', 'detected' and 'testsets'. Replace it with the "
            "cuhk-03.mat of the official cuhk03_release.zip.")
    images = []
    for p, pair_ref in enumerate(np.ravel(mat[variant][()]), 1):
      slots = mat[pair_ref][()].T  # (persons, 10) refs; see extract_...
      for n in range(slots.shape[0]):
        for s in range(slots.shape[1]):
          if len(mat[slots[n, s]].shape) != 3:
            continue  # An empty cell.
          view = 1 if s < 5 else 2
          images.append((p, n + 1, f"{p}_{n + 1:03d}_{view}_{s + 1:02d}.png"))
    tests = np.ravel(mat["testsets"][()])
    if not 0 <= index < len(tests):
      raise ValueError(
          f"CUHK03 classic_split must be in 0..{len(tests) - 1} ({raw_mat!r} "
          f"holds {len(tests)} test sets), got {index}.")
    rows = np.asarray(mat[tests[index]][()])
  # MATLAB's (100, 2) [pair, person] matrix; HDF5 stores it transposed.
  rows = rows.T
  if rows.ndim != 2 or rows.shape[1] != 2:
    raise LayoutError(f"{raw_mat!r}: testsets{{{index + 1}}} has shape "
                      f"{rows.shape}, expected (persons, 2) [pair, person].")
  test = [(int(a), int(b)) for a, b in rows]
  persons = {(p, n) for p, n, _ in images}
  unknown = [t for t in test if t not in persons]
  if unknown or len(set(test)) != len(test):
    raise LayoutError(
        f"{raw_mat!r}: testsets{{{index + 1}}} "
        + (f"names persons {unknown[:3]} (pair, person) that have no "
           f"{variant} image." if unknown else "lists a person twice."))
  return images, set(test)


def _parse_classic(root: str, name: str, variant: str,
                   index: int) -> ImageDataset:
  candidates = candidate_roots(root, label="CUHK03",
                               archive_dirs=CUHK03_ARCHIVE_DIRS,
                               help_text=CUHK03_HELP)
  found = [(base, m) for base in candidates
           for m in _raw_mat_candidates(base) if os.path.isfile(m)]
  if not found:
    raise DatasetNotFoundError(
        f"CUHK03 root {root!r}: the classic split needs {CUHK03_RAW_MAT} "
        f"(its 'testsets'), found in none of "
        + ", ".join(repr(m) for b in candidates
                    for m in _raw_mat_candidates(b))
        + f".\n{CUHK03_HELP}")
  base, raw = found[0]
  images, test = read_classic_split(raw, variant, index)
  person_ids = sorted({(p, n) for p, n, _ in images})
  if (len(person_ids) == CUHK03_PERSONS
      and len(test) != CUHK03_CLASSIC_TEST_IDS):
    raise LayoutError(
        f"{raw!r}: testsets{{{index + 1}}} holds {len(test)} persons; the "
        f"classic protocol tests on {CUHK03_CLASSIC_TEST_IDS}.")
  # Dataset-wide labels 1..1467 in (pair, person) order.
  label = {pid: i + 1 for i, pid in enumerate(person_ids)}
  image_dir = _ensure_images(base, variant, [f for _, _, f in images])

  def split(rows, relabel):
    pids = np.asarray([label[p, n] for p, n, _ in rows], np.int64)
    if relabel:
      pids = contiguous_labels(pids)
    return ImageSplit(
        paths=tuple(os.path.join(image_dir, f) for _, _, f in rows),
        pids=pids.astype(np.int32),
        # The view (1 or 2) in the name: camera 1 / 2 of the pair.
        camids=np.asarray([int(f.split("_")[2]) - 1 for _, _, f in rows],
                          np.int32))

  test_split = split([r for r in images if r[:2] in test], False)
  return ImageDataset(
      name=name, root=base,
      train=split([r for r in images if r[:2] not in test], True),
      query=test_split, gallery=test_split)


def parse_cuhk03(root: str, *, name: str = "cuhk03",
                 variant: str = "labeled", split: str = "767/700",
                 classic_split: int = 0) -> ImageDataset:
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

  ``split="classic"``: the classic protocol instead (module docstring):
  train = the persons outside ``testsets{classic_split + 1}`` of
  cuhk-03.mat, relabelled 0..P-1; query = gallery = the images of its test
  persons, pids = 1-based person numbers in (pair, person) order, camids =
  the view - 1. Evaluate with the "cuhk03" protocol.

  Args:
    root: the CUHK03 folder.
    name: dataset name recorded in the index.
    variant: "labeled" (hand-drawn boxes) or "detected" (DPM boxes).
    split: "767/700" (Zhong et al.) or "classic" (Li et al., 1367/100).
    classic_split: which of the 20 classic splits (0-based); classic only.

  Raises:
    ValueError: unknown variant or split.
    DatasetNotFoundError: root, the config, or images (with no cuhk-03.mat to
      extract them from) are missing.
    LayoutError: a config or cuhk-03.mat does not have the expected content.
    StatisticsError: a complete-looking copy has the wrong counts.
  """
  if variant not in CUHK03_VARIANTS:
    raise ValueError(
        f"CUHK03 variant {variant!r} is not one of {CUHK03_VARIANTS}.")
  if split not in CUHK03_SPLITS:
    raise ValueError(f"CUHK03 split (data.options.split) must be one of "
                     f"{CUHK03_SPLITS}, got {split!r}.")
  if split == "classic":
    return _parse_classic(os.fspath(root), name, variant, int(classic_split))
  if classic_split != 0:
    raise ValueError(
        f"CUHK03 classic_split={classic_split} applies to split='classic' "
        f"only; the {split} protocol has one split.")
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
