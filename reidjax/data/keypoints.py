"""Pose keypoints as data: the file format, its loader and the flip table.

Attention-Driven ReID (Yang, Yan, Lu et al., Pattern Recognition 2019,
Sec. 3.2) cuts its body-part images out of boxes computed from 18 pose
keypoints per image (OpenPose's COCO-18 joints, Fig. 4a). reidjax does not
run a pose estimator: the keypoints come from a file the user provides, one
per dataset split, written by any estimator (see README.md, "Pose keypoints").

File format (JSON, UTF-8), one file per split (train, query, gallery)::

  {
    "format": "reidjax-keypoints",          # required, this exact string
    "joints": "coco18",                     # required: COCO18_NAMES order
    "keypoints": {                          # file name -> 18 x [x, y, c]
      "0002_c1s1_000451_03.jpg": [[31.5, 20.0, 0.91], ..., [0, 0, 0]],
      "0007_c2s3_070952_01.jpg": [],        # no person found
      ...
    }
  }

* Keys are image *file names* (the last path component), matched to the
  split's index by name; names must be unique within the split.
* Each value lists the 18 joints in ``COCO18_NAMES`` order (OpenPose's
  ``--write_json`` ``pose_keypoints_2d`` with the COCO model, reshaped to
  18 x 3), each ``[x, y, confidence]`` in the ORIGINAL image's pixels:
  x to the right, y down, the image's top-left corner at (0, 0) (a pixel
  index plus 0.5 is its centre; estimators that report pixel indices are
  0.5 px off, which is negligible). Confidence in [0, 1]; 0 means the joint
  was not found (x and y are then ignored). An empty list means no person
  was found: 18 missing joints.
* "Right" and "left" are the person's own sides, as the estimators label
  them (a person facing the camera has the right shoulder on the image's
  left).

``load_keypoints(path, paths)`` returns the (N, 18, 3) float32 array in the
split's order. Images of the split missing from the file are an error naming
a few of them (``unmatched="warn"`` logs them instead and gives them 18
missing joints, hence the stripes). Names in the file that the split does
not hold are logged, naming a few, and ignored: an estimator run over a
whole folder also covers images the parser drops (Market-1501's junk), so
extra entries alone are not an error; a file of the wrong split shows up as
missing images. ``FLIP_PERMUTATION`` swaps left and right joints for a
mirrored image. Plain NumPy: no TensorFlow here.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

_log = logging.getLogger(__name__)

FORMAT = "reidjax-keypoints"
JOINTS = "coco18"
NUM_JOINTS = 18
# OpenPose's COCO-18 joint order ("right" / "left": the person's own sides).
COCO18_NAMES = (
    "nose", "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
JOINT_INDEX = {name: i for i, name in enumerate(COCO18_NAMES)}


def _flip_permutation() -> np.ndarray:
  swap = {"right_": "left_", "left_": "right_"}
  out = []
  for name in COCO18_NAMES:
    for a, b in swap.items():
      if name.startswith(a):
        name = b + name[len(a):]
        break
    out.append(JOINT_INDEX[name])
  return np.asarray(out, np.int32)


# Joint j of a mirrored image is joint FLIP_PERMUTATION[j] of the original
# (with x mirrored): right and left swap, nose and neck stay.
FLIP_PERMUTATION = _flip_permutation()
UNMATCHED_POLICIES = ("error", "warn")
# Split name -> keypoints file name inside the keypoints folder.
SPLIT_FILES = {"train": "train.json", "query": "query.json",
               "gallery": "gallery.json"}
_SHOW = 5  # Names quoted in a mismatch message.


def joint_indices(names: Sequence[str] | str) -> tuple[int, ...]:
  """COCO-18 indices of joint names; ``"all"`` is every joint."""
  if isinstance(names, str):
    if names == "all":
      return tuple(range(NUM_JOINTS))
    names = (names,)
  unknown = [n for n in names if n not in JOINT_INDEX]
  if unknown or not names:
    raise ValueError(
        f"Unknown joint name(s) {unknown or list(names)}: a joint set lists "
        f"names of {list(COCO18_NAMES)} (or is 'all').")
  return tuple(JOINT_INDEX[n] for n in names)


# COCO-17 (MMPose, OpenPifPaf, Detectron2) joint names, in their order.
COCO17_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)


def coco17_to_coco18(keypoints: np.ndarray) -> np.ndarray:
  """(..., 17, 3) COCO-17 keypoints -> (..., 18, 3) COCO-18 (OpenPose order).

  The neck, which COCO-17 lacks, is the midpoint of the shoulders with the
  smaller of their confidences (0 when either is missing).
  """
  keypoints = np.asarray(keypoints, np.float32)
  if keypoints.shape[-2:] != (17, 3):
    raise ValueError(f"coco17_to_coco18 takes (..., 17, 3) keypoints, got "
                     f"{keypoints.shape}.")
  index = {name: i for i, name in enumerate(COCO17_NAMES)}
  out = np.zeros(keypoints.shape[:-2] + (NUM_JOINTS, 3), np.float32)
  for j, name in enumerate(COCO18_NAMES):
    if name != "neck":
      out[..., j, :] = keypoints[..., index[name], :]
  left = keypoints[..., index["left_shoulder"], :]
  right = keypoints[..., index["right_shoulder"], :]
  neck = out[..., JOINT_INDEX["neck"], :]
  neck[..., :2] = (left[..., :2] + right[..., :2]) / 2
  neck[..., 2] = np.minimum(left[..., 2], right[..., 2])
  return out


def mirror_keypoints(keypoints: np.ndarray, width: float) -> np.ndarray:
  """(..., 18, 3) keypoints of an image of ``width`` -> its mirror's.

  x -> width - x (continuous coordinates) and left / right joints swapped;
  confidences travel with their joints.
  """
  keypoints = np.asarray(keypoints)
  out = keypoints[..., FLIP_PERMUTATION, :].copy()
  out[..., 0] = width - out[..., 0]
  return out


def _as_joints(name: str, value: Any, path: str) -> np.ndarray:
  if isinstance(value, list) and not value:
    return np.zeros((NUM_JOINTS, 3), np.float32)  # No person found.
  try:
    joints = np.asarray(value, np.float64)
  except (TypeError, ValueError):
    joints = None
  if joints is None or joints.shape != (NUM_JOINTS, 3):
    raise ValueError(
        f"Keypoints file {path!r}: the entry of {name!r} is not 18 x "
        f"[x, y, confidence] (or [] for no person); got "
        f"{np.shape(value) if joints is not None else type(value).__name__}.")
  if not np.isfinite(joints).all():
    raise ValueError(f"Keypoints file {path!r}: {name!r} holds NaN or inf.")
  conf = joints[:, 2]
  if (conf < 0).any() or (conf > 1).any():
    raise ValueError(
        f"Keypoints file {path!r}: {name!r} has confidences outside [0, 1] "
        f"({conf.min():.3g}..{conf.max():.3g}); rescale them to [0, 1].")
  return joints.astype(np.float32)


def read_keypoints_file(path: str) -> dict[str, np.ndarray]:
  """Reads and checks a keypoints file: file name -> (18, 3) float32."""
  try:
    with open(path, encoding="utf-8") as f:
      content = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(
        f"No keypoints file {path!r}. Write one per split with a pose "
        "estimator (README.md, 'Pose keypoints'), point data.parts."
        "keypoints_dir at their folder, or set data.parts.source='stripes'."
    ) from None
  except json.JSONDecodeError as e:
    raise ValueError(f"Keypoints file {path!r} is not valid JSON: {e}") from e
  if (not isinstance(content, dict) or content.get("format") != FORMAT
      or content.get("joints") != JOINTS
      or not isinstance(content.get("keypoints"), dict)):
    raise ValueError(
        f"Keypoints file {path!r} is not a reidjax keypoints file: it must "
        f"be a JSON object with \"format\": \"{FORMAT}\", \"joints\": "
        f"\"{JOINTS}\" and \"keypoints\": {{file name: 18 x [x, y, c]}} "
        "(see reidjax/data/keypoints.py).")
  return {str(name): _as_joints(name, value, path)
          for name, value in content["keypoints"].items()}


def write_keypoints_file(path: str, keypoints: Mapping[str, np.ndarray],
                         **extra: Any) -> None:
  """Writes ``{file name: (18, 3)}`` in the format above, atomically.

  Rows with confidence 0 are written as [0, 0, 0]; ``extra`` keys (e.g. the
  generator) are stored beside the required ones.
  """
  entries = {}
  for name, joints in keypoints.items():
    joints = np.asarray(joints, np.float64).reshape(NUM_JOINTS, 3)
    joints = np.where(joints[:, 2:] > 0, joints, 0.0)
    entries[name] = [[round(float(v), 3) for v in row] for row in joints]
  content = dict(extra, format=FORMAT, joints=JOINTS, keypoints=entries)
  tmp = f"{path}.partial-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(content, f, separators=(",", ":"))
  os.replace(tmp, path)  # Readers never see half a file.


def _names(names: Sequence[str]) -> str:
  shown = ", ".join(repr(n) for n in list(names)[:_SHOW])
  return shown + (f" and {len(names) - _SHOW} more" if len(names) > _SHOW
                  else "")


def match_keypoints(table: Mapping[str, np.ndarray], paths: Sequence[str], *,
                    source: str, unmatched: str = "error") -> np.ndarray:
  """(N, 18, 3) float32 keypoints of ``paths`` (by file name) from ``table``.

  Args:
    table: file name -> (18, 3), e.g. ``read_keypoints_file(...)``.
    paths: the split's image paths, in split order.
    source: what to call the table in messages (its file).
    unmatched: "error" (default): images without keypoints raise ValueError
      naming a few; "warn": they are logged and get 18 missing joints (the
      part boxes then fall back to stripes). Either way, keypoints of images
      the split does not hold are logged (naming a few) and ignored.
  """
  if unmatched not in UNMATCHED_POLICIES:
    raise ValueError(f"data.parts.unmatched must be one of "
                     f"{UNMATCHED_POLICIES}, got {unmatched!r}.")
  names = [os.path.basename(p) for p in paths]
  if len(set(names)) != len(names):
    seen, dups = set(), []
    for n in names:
      if n in seen:
        dups.append(n)
      seen.add(n)
    raise ValueError(
        f"The split holds several images named {_names(sorted(set(dups)))}: "
        "keypoints are matched by file name, which must be unique in a split.")
  missing = [n for n in names if n not in table]
  extra = sorted(set(table) - set(names))
  if extra:
    _log.warning("%s holds keypoints of %d images the split does not have "
                 "(%s); they are ignored.", source, len(extra), _names(extra))
  if missing:
    message = (f"{len(missing)} of the split's {len(names)} images have no "
               f"keypoints in {source} ({_names(missing)}).")
    if unmatched == "error":
      raise ValueError(
          message + " Write the file for this very split (one file per "
          "split, keyed by file name), or set data.parts.unmatched='warn' "
          "to give those images no keypoints (stripes).")
    _log.warning("%s They get no keypoints (stripes).", message)
  empty = np.zeros((NUM_JOINTS, 3), np.float32)
  if not names:
    return np.zeros((0, NUM_JOINTS, 3), np.float32)
  return np.stack([table.get(n, empty) for n in names]).astype(np.float32)


def load_keypoints(path: str, paths: Sequence[str], *,
                   unmatched: str = "error") -> np.ndarray:
  """Reads ``path`` and returns the (N, 18, 3) keypoints of ``paths``."""
  return match_keypoints(read_keypoints_file(path), paths, source=repr(path),
                         unmatched=unmatched)


def keypoints_dir(data_config: Any) -> str:
  """``data.parts.keypoints_dir``, or ``<data.root>/keypoints`` when empty."""
  folder = data_config.parts.get("keypoints_dir", "")
  if folder:
    return folder
  root = data_config.get("root", "")
  if not root:
    # Synthetic sets: their default root (the set writes its keypoints).
    from reidjax.data import datasets  # pylint: disable=g-import-not-at-top
    root = datasets.SYNTHETIC_WRITERS.get(data_config.name, (None, ""))[1]
  return os.path.join(root, "keypoints")


def split_keypoints_path(data_config: Any, split: str) -> str:
  """The keypoints file of ``split`` ("train", "query" or "gallery")."""
  return os.path.join(keypoints_dir(data_config), SPLIT_FILES[split])
