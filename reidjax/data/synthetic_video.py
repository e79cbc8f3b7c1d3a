"""Procedurally rendered pedestrian tracklets, written in the MARS layout.

The video counterpart of `synthetic.py`: the same identities, cameras and
renderer, but each sample is a tracklet - a smooth sequence of `View`s in
which the person walks (gait phase advancing frame by frame, drifting
horizontal position, growing or shrinking as they approach or leave) in front
of a fixed camera and background. A few frames per tracklet go wrong the way
detector output does: an object occludes part of the person for a short run
of frames, or the box is badly cropped (shifted, or too tight) for a frame.

The files follow the real MARS release (Zheng et al., ECCV 2016) exactly:

  bbox_train/<pid>/<pid>C<cam>T<tracklet>F<frame>.jpg   e.g. 0001C1T0001F001.jpg
  bbox_test/<pid>/...        (pid folder 0000: distractors; 00-1: junk)
  info/train_name.txt, info/test_name.txt   every frame name, one per line,
      grouped by tracklet in temporal order
  info/tracks_train_info.mat (track_train_info), info/tracks_test_info.mat
      (track_test_info): (T, 4) rows [start, end, pid, camid], 1-based
      inclusive row ranges into the name list, 1-based camid, pid 0 for
      distractors and -1 for junk
  info/query_IDX.mat (query_IDX): (1, Q) 1-based rows of track_test_info; the
      gallery is every other test tracklet

Readings taken where the release leaves room: the .mat arrays are int32, as
in the released files (torchreid slices the name list with them, which needs
integers); cameras are 1-based in names and in camid; the tracklet number
counts from 1 per (pid, camera) and the frame number from 1 per tracklet;
tracklets are listed in the order of their file names (junk, distractors,
then pids; camera; tracklet), so each name list equals the sorted file names.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Optional, Sequence, Union

import numpy as np
import scipy.io

from reidjax.data import synthetic
from reidjax.data.synthetic import Identity, View

# Bumped whenever rendering or planning changes, so a stale set is not reused.
GENERATOR_VERSION = 1
MARKER_NAME = "synthetic_mars.json"
TRAIN_DIR, TEST_DIR, INFO_DIR = "bbox_train", "bbox_test", "info"
DISTRACTOR_PID, JUNK_PID = 0, -1
# Occluders and bad crops per tracklet: a few frames, not most.
OCCLUSION_P = 0.5  # Chance that a tracklet has an occluded run of frames.
MAX_OCCLUDED_RUN = 3
BAD_CROP_P = 0.4  # Chance that a tracklet has badly cropped frames.
MAX_BAD_CROPS = 2


def frame_name(pid: int, cam: int, tracklet: int, frame: int) -> str:
  """MARS frame file name; `cam`, `tracklet` and `frame` are 1-based."""
  return f"{pid_folder(pid)}C{cam}T{tracklet:04d}F{frame:03d}.jpg"


def pid_folder(pid: int) -> str:
  """MARS pid folder: 0001, ..., 0000 for distractors, 00-1 for junk."""
  return "00-1" if pid == JUNK_PID else f"{pid:04d}"


@dataclasses.dataclass(frozen=True)
class TrackletViews:
  """The per-frame views of one tracklet and which frames went wrong.

  Attributes:
    views: (F,) views in temporal order.
    occluded: (F,) bool, an occluder box covers part of the person.
    bad_crop: (F,) bool, the box is shifted or too tight.
  """
  views: tuple[View, ...]
  occluded: np.ndarray
  bad_crop: np.ndarray


def _lerp(a: float, b: float, t: float) -> float:
  return float(a + (b - a) * t)


def sample_tracklet_views(rng: np.random.Generator, num_frames: int, *,
                          fragment: bool = False,
                          occlusion_p: float = OCCLUSION_P,
                          bad_crop_p: float = BAD_CROP_P) -> TrackletViews:
  """Samples a walk: views interpolated smoothly over `num_frames` frames.

  What stays fixed over a tracklet: front/back, flip, stride, background
  offset, light, blur and noise level (one camera, one pass). What moves:
  gait phase (a constant step per frame), horizontal / vertical position and
  scale (linear from a start to an end value, plus a pixel of detector
  jitter), and the pixel-noise seed. Then a run of <= MAX_OCCLUDED_RUN frames
  may get an occluder box over part of the person, and <= MAX_BAD_CROPS
  frames a shifted or too-tight box.

  Args:
    rng: random generator (consumed).
    num_frames: F >= 1.
    fragment: zoom into part of the person throughout (junk tracklets).
    occlusion_p: chance of an occluded run.
    bad_crop_p: chance of badly cropped frames.

  Returns:
    TrackletViews with F views.
  """
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
  base = dataclasses.replace(synthetic.sample_view(rng, fragment=fragment),
                             occluder="none", other=None)
  # Where the walk ends relative to where it starts: a person drifts across
  # the detector box by up to ~1/8 of its width and changes size by <= 15%.
  scale_end = base.scale * float(np.exp(rng.uniform(-0.15, 0.15)))
  dx_end = base.dx + float(rng.uniform(-0.12, 0.12))
  dy_end = base.dy + float(rng.uniform(-0.03, 0.03))
  # A gait cycle lasts 8-14 frames: limbs visibly move, but gradually.
  phase_step = float(2 * np.pi / rng.uniform(8.0, 14.0))
  jitter = rng.normal(0.0, 0.006, (num_frames, 2))
  noise_seeds = rng.integers(2**31, size=num_frames)

  views = []
  for f in range(num_frames):
    t = f / max(num_frames - 1, 1)
    views.append(dataclasses.replace(
        base, scale=_lerp(base.scale, scale_end, t),
        dx=_lerp(base.dx, dx_end, t) + float(jitter[f, 0]),
        dy=_lerp(base.dy, dy_end, t) + float(jitter[f, 1]),
        phase=base.phase + phase_step * f, seed=int(noise_seeds[f])))

  occluded = np.zeros(num_frames, bool)
  if rng.random() < occlusion_p:
    # Something between camera and person for a few consecutive frames: a
    # box covering 20-45% of the height at a random place over the body.
    run = int(rng.integers(1, min(MAX_OCCLUDED_RUN, num_frames) + 1))
    first = int(rng.integers(0, num_frames - run + 1))
    w, h = rng.uniform(0.35, 0.8), rng.uniform(0.2, 0.45)
    cx = 0.5 + views[first].dx + rng.uniform(-0.2, 0.2)
    cy = rng.uniform(0.25, 0.85)
    box = tuple(float(v) for v in (cx - w / 2, cy - h / 2, cx + w / 2,
                                   cy + h / 2))
    for f in range(first, first + run):
      views[f] = dataclasses.replace(views[f], occluder="box", occ_box=box)
      occluded[f] = True

  bad_crop = np.zeros(num_frames, bool)
  if rng.random() < bad_crop_p:
    n_bad = int(rng.integers(1, min(MAX_BAD_CROPS, num_frames) + 1))
    for f in rng.choice(num_frames, n_bad, replace=False):
      v, kind = views[f], int(rng.integers(3))
      sign = float(rng.choice([-1.0, 1.0]))
      if kind == 0:  # Box slid sideways: part of the body is cut off.
        v = dataclasses.replace(v, dx=v.dx + sign * rng.uniform(0.25, 0.4))
      elif kind == 1:  # Box slid up or down: head or feet cut off.
        v = dataclasses.replace(v, dy=v.dy + sign * rng.uniform(0.12, 0.25))
      else:  # Box too tight: the person overflows it.
        v = dataclasses.replace(v, scale=v.scale * rng.uniform(1.3, 1.6))
      views[f] = v
      bad_crop[f] = True
  return TrackletViews(tuple(views), occluded, bad_crop)


@dataclasses.dataclass(frozen=True)
class _Tracklet:
  split: str  # TRAIN_DIR or TEST_DIR.
  pid: int
  cam: int  # 1-based.
  number: int  # 1-based, per (pid, cam).
  identity: Optional[Identity]
  views: TrackletViews

  @property
  def names(self) -> list[str]:
    return [frame_name(self.pid, self.cam, self.number, f + 1)
            for f in range(len(self.views.views))]


def _plan(params: dict) -> list[_Tracklet]:
  """Decides every tracklet (no rendering): split, pid, camera, views."""
  seed = params["seed"]
  n_cams = params["num_cameras"]
  lo, hi = params["tracklets_per_id"]
  min_frames, max_frames = params["min_frames"], params["max_frames"]
  rng = np.random.default_rng([seed, 10])
  n_ids = params["num_train_ids"] + params["num_test_ids"]
  # Train and test pids interleave, as in MARS.
  train_pids = {int(p) for p in
                rng.permutation(np.arange(1, n_ids + 1))[
                    :params["num_train_ids"]]}
  next_number = {}  # (pid, cam) -> next tracklet number.

  def tracklet(split, pid, cam, identity, views_rng, fragment=False):
    number = next_number.get((pid, cam), 1)
    if number > 9999:
      raise ValueError(
          f"More than 9999 tracklets for pid {pid} in camera {cam}: MARS "
          "names hold 4 tracklet digits. Use fewer distractor/junk tracklets "
          "or more cameras.")
    next_number[(pid, cam)] = number + 1
    n_frames = int(rng.integers(min_frames, max_frames + 1))
    return _Tracklet(split, pid, cam, number, identity,
                     sample_tracklet_views(views_rng, n_frames,
                                           fragment=fragment))

  tracklets = []
  test_identities = []
  for pid in range(1, n_ids + 1):
    identity = synthetic.sample_identity(np.random.default_rng([seed, 11, pid]))
    views_rng = np.random.default_rng([seed, 12, pid])
    split = TRAIN_DIR if pid in train_pids else TEST_DIR
    if split == TEST_DIR:
      test_identities.append((pid, identity))
    n = int(rng.integers(lo, hi + 1))
    # >= 2 cameras per id, so a query always has a cross-camera match; more
    # tracklets than cameras repeat a camera (a person walking past twice).
    k = int(rng.integers(2, min(n, n_cams) + 1))
    cams = np.sort(rng.choice(n_cams, k, replace=False)) + 1
    per_cam = 1 + rng.multinomial(n - k, np.ones(k) / k)
    for cam, count in zip(cams, per_cam):
      for _ in range(count):
        tracklets.append(tracklet(split, pid, int(cam), identity, views_rng))

  extra_rng = np.random.default_rng([seed, 13])
  for _ in range(params["num_distractor_tracklets"]):
    # Distractors: strangers walking past, or false detections on clutter.
    cam = int(extra_rng.integers(n_cams)) + 1
    identity = (synthetic.sample_identity(extra_rng)
                if extra_rng.random() < 0.5 else None)
    t = tracklet(TEST_DIR, DISTRACTOR_PID, cam, identity, extra_rng)
    if identity is None:
      t = dataclasses.replace(t, views=_hold_clutter(t.views))
    tracklets.append(t)
  for _ in range(params["num_junk_tracklets"]):
    # Junk: fragments of test people (the protocol ignores them).
    cam = int(extra_rng.integers(n_cams)) + 1
    _, identity = test_identities[int(extra_rng.integers(
        len(test_identities)))]
    tracklets.append(tracklet(TEST_DIR, JUNK_PID, cam, identity, extra_rng,
                              fragment=True))
  # File-name order: 00-1 < 0000 < 0001 < ..., then camera, then tracklet.
  tracklets.sort(key=lambda t: (t.pid, t.cam, t.number))
  return tracklets


def _hold_clutter(views: TrackletViews) -> TrackletViews:
  """Keeps a clutter tracklet's clutter in place while its box pans.

  render() draws clutter from the view's seed, so a fresh seed per frame
  would make it flicker; one seed holds it, and the background slides by a
  pixel per frame as under a drifting false-detection box.
  """
  held = tuple(
      dataclasses.replace(v, seed=views.views[0].seed,
                          bg_shift=(v.bg_shift[0], v.bg_shift[1] + f))
      for f, v in enumerate(views.views))
  return dataclasses.replace(views, views=held)


def _choose_queries(params: dict, test: list[_Tracklet]) -> np.ndarray:
  """(Q,) 0-based rows of the test tracklets: one per test identity."""
  rng = np.random.default_rng([params["seed"], 14])
  rows = {}
  for row, t in enumerate(test):
    if t.pid > 0:
      rows.setdefault(t.pid, []).append(row)
  return np.array([rows[pid][int(rng.integers(len(rows[pid])))]
                   for pid in sorted(rows)], np.int64)


def _savemat(path: str, name: str, array: np.ndarray) -> None:
  """scipy.io.savemat, minus the creation time it puts in the header."""
  buf = io.BytesIO()
  scipy.io.savemat(buf, {name: array})
  data = buf.getvalue()
  # The first 116 bytes of a MAT 5 file are free text; savemat stamps
  # time.asctime() there, which would make the set differ from run to run.
  header = b"MATLAB 5.0 MAT-file, written by reidjax.data.synthetic_video"
  with open(path, "wb") as f:
    f.write(header.ljust(116, b" ") + data[116:])


def _write(root: str, params: dict) -> dict:
  cameras = synthetic.make_cameras(params["seed"], params["num_cameras"])
  size = (params["height"], params["width"])
  plan = _plan(params)
  os.makedirs(os.path.join(root, INFO_DIR))
  counts = {"occluded_frames": 0, "badly_cropped_frames": 0}
  for split, prefix in ((TRAIN_DIR, "train"), (TEST_DIR, "test")):
    tracks = [t for t in plan if t.split == split]
    names, info = [], []
    for t in tracks:
      folder = os.path.join(root, split, pid_folder(t.pid))
      os.makedirs(folder, exist_ok=True)
      t_names = t.names
      info.append((len(names) + 1, len(names) + len(t_names), t.pid, t.cam))
      names += t_names
      for name, view in zip(t_names, t.views.views):
        image = synthetic.render(t.identity, cameras[t.cam - 1], view, size)
        with open(os.path.join(folder, name), "wb") as f:
          f.write(synthetic.encode_jpeg(image, params["jpeg_quality"]))
      counts["occluded_frames"] += int(t.views.occluded.sum())
      counts["badly_cropped_frames"] += int(t.views.bad_crop.sum())
    with open(os.path.join(root, INFO_DIR, f"{prefix}_name.txt"), "w") as f:
      f.write("".join(n + "\n" for n in names))
    _savemat(os.path.join(root, INFO_DIR, f"tracks_{prefix}_info.mat"),
             f"track_{prefix}_info", np.array(info, np.int32).reshape(-1, 4))
    counts[f"{prefix}_tracklets"] = len(tracks)
    counts[f"{prefix}_frames"] = len(names)
    counts[f"{prefix}_ids"] = len({t.pid for t in tracks if t.pid > 0})
    if split == TEST_DIR:
      query = _choose_queries(params, tracks)
      _savemat(os.path.join(root, INFO_DIR, "query_IDX.mat"), "query_IDX",
               (query + 1).astype(np.int32)[None, :])
      counts["query_tracklets"] = len(query)
      counts["gallery_tracklets"] = len(tracks) - len(query)
  return counts


def _tracklet_range(tracklets_per_id) -> list[int]:
  if isinstance(tracklets_per_id, (int, np.integer)):
    return [int(tracklets_per_id)] * 2
  if len(tracklets_per_id) != 2:
    raise ValueError(
        f"tracklets_per_id={tracklets_per_id} must be an int or a (low, high) "
        "pair.")
  return [int(v) for v in tracklets_per_id]


def write_synthetic_mars(
    root: str,
    *,
    num_train_ids: int = 150,
    num_test_ids: int = 100,
    num_cameras: int = 6,
    tracklets_per_id: Union[int, tuple[int, int]] = (2, 3),
    min_frames: int = 8,
    max_frames: int = 16,
    height: int = 128,
    width: int = 64,
    num_distractor_tracklets: int = 30,
    num_junk_tracklets: int = 15,
    seed: int = 0,
    jpeg_quality: int = 90,
) -> dict:
  """Writes a synthetic video ReID set in the MARS layout.

  Train and test ids are disjoint; every id has tracklets in >= 2 cameras, so
  the one query tracklet per test id (in one of its cameras) has a match in
  another camera among the gallery (all other test tracklets, including the
  distractors, pid 0, and the junk, pid -1). The defaults (~8k frames at
  128x64) take ~30 s of one CPU core; 64x32 frames take about half that.
  Writing is sequential, like synthetic.py's: a process pool would fork a
  process that already runs TensorFlow / JAX threads.

  Deterministic in `seed` (byte-identical files) and idempotent: a complete
  set written with the same parameters is reused; `root` is never left
  half-written, and a foreign folder is never written into.

  Args:
    root: destination folder; must not exist, be empty, or hold this set.
    num_train_ids: identities in bbox_train/.
    num_test_ids: identities in bbox_test/ (one query tracklet each).
    num_cameras: cameras (2..9, MARS names hold one digit).
    tracklets_per_id: tracklets per identity, an int or an inclusive
      (low, high) range; low >= 2.
    min_frames: shortest tracklet (frames).
    max_frames: longest tracklet (<= 999, MARS names hold 3 frame digits).
    height: frame height, pixels.
    width: frame width, pixels.
    num_distractor_tracklets: pid-0 test tracklets (strangers, clutter).
    num_junk_tracklets: pid -1 test tracklets (fragments of test people).
    seed: random seed.
    jpeg_quality: JPEG quality of every frame (1..95).

  Returns:
    {"generator", "params", "counts"}: the parameters and the counts of
    tracklets / frames / ids per split, queries, occluded and badly cropped
    frames (also stored in the marker file MARKER_NAME).

  Raises:
    ValueError: bad parameters, or `root` holds something else.
  """
  root = os.fspath(root)
  lo, hi = _tracklet_range(tracklets_per_id)
  if not 2 <= num_cameras <= 9:
    raise ValueError(f"num_cameras must be in 2..9, got {num_cameras}.")
  if not 2 <= lo <= hi:
    raise ValueError(
        f"tracklets_per_id={tracklets_per_id} must be an int >= 2 or a range "
        "(low, high) with 2 <= low <= high: each id needs tracklets in 2 "
        "cameras.")
  if not 1 <= min_frames <= max_frames <= 999:
    raise ValueError(
        f"Need 1 <= min_frames <= max_frames <= 999 (3 frame digits in MARS "
        f"names), got min_frames={min_frames}, max_frames={max_frames}.")
  if num_train_ids < 1 or num_test_ids < 1:
    raise ValueError(
        f"num_train_ids and num_test_ids must be >= 1, got {num_train_ids} "
        f"and {num_test_ids}.")
  if num_train_ids + num_test_ids > 9999:
    raise ValueError("At most 9999 identities fit 4-digit MARS pids.")
  if num_distractor_tracklets < 0 or num_junk_tracklets < 0:
    raise ValueError("num_distractor_tracklets and num_junk_tracklets must "
                     "be >= 0.")
  if height < 16 or width < 8:
    raise ValueError(f"Frames must be at least 16x8, got {height}x{width}.")
  if not 1 <= jpeg_quality <= 95:
    raise ValueError(f"jpeg_quality must be in 1..95, got {jpeg_quality}.")
  params = dict(
      version=GENERATOR_VERSION, num_train_ids=int(num_train_ids),
      num_test_ids=int(num_test_ids), num_cameras=int(num_cameras),
      tracklets_per_id=[lo, hi], min_frames=int(min_frames),
      max_frames=int(max_frames), height=int(height), width=int(width),
      num_distractor_tracklets=int(num_distractor_tracklets),
      num_junk_tracklets=int(num_junk_tracklets), seed=int(seed),
      jpeg_quality=int(jpeg_quality))
  return synthetic.write_once(root, params, lambda tmp: _write(tmp, params),
                              generator="reidjax.data.synthetic_video",
                              marker_name=MARKER_NAME)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """`python -m reidjax.data.synthetic_video --root ROOT`: writes the set."""
  import argparse  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("--root", required=True)
  parser.add_argument("--seed", type=int, default=0)
  # Unset flags keep write_synthetic_mars's defaults.
  for flag in ("num_train_ids", "num_test_ids", "num_cameras", "min_frames",
               "max_frames", "height", "width", "num_distractor_tracklets",
               "num_junk_tracklets", "jpeg_quality"):
    parser.add_argument(f"--{flag}", type=int)
  parser.add_argument("--tracklets_per_id", type=int, nargs="+",
                      help="an int, or a range: LOW HIGH")
  args = vars(parser.parse_args(argv))
  root = args.pop("root")
  per_id = args["tracklets_per_id"]
  if per_id is not None:
    args["tracklets_per_id"] = per_id[0] if len(per_id) == 1 else tuple(per_id)
  start = time.time()
  out = write_synthetic_mars(
      root, **{k: v for k, v in args.items() if v is not None})
  counts = out["counts"]
  print(f"Synthetic MARS set at {root}: {counts['train_tracklets']} "
        f"train / {counts['test_tracklets']} test tracklets, "
        f"{counts['train_frames'] + counts['test_frames']} frames "
        f"({time.time() - start:.1f} s).")


if __name__ == "__main__":
  main()
