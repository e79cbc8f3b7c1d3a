"""What every dataset layout parser shares: errors, pid conventions, helpers.

Plain Python/NumPy: no TensorFlow. The per-family parsers
(`market_layouts`, `msmt17`, `custom_layout`, `cuhk03`, `video_layouts`)
import these public names; `reidjax.data.layouts` maps dataset names to the
parsers.

Conventions every parser follows, so that all consumers of an index see the
same splits:

* pid -1 (``JUNK_PID``) marks junk items, dropped from every split;
  pid 0 (``DISTRACTOR_PID``) marks Market-style distractors, kept in the
  gallery only. Datasets without such ids keep every item.
* Train pids are relabelled 0..P-1 in sorted order of the dataset's pids
  (`contiguous_labels`), so every process derives the same labels from the
  file names alone; query and gallery keep the dataset's pids.
* Camera ids are 0-based.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Mapping

import numpy as np

from reidjax.data.index import Dataset, ImageSplit, is_video

JUNK_PID = -1
DISTRACTOR_PID = 0

_log = logging.getLogger(__name__)


class LayoutError(ValueError):
  """A dataset folder exists but does not follow the expected layout."""


class DatasetNotFoundError(LayoutError, FileNotFoundError):
  """A dataset root or one of its split folders is missing."""


class StatisticsError(LayoutError):
  """A complete-looking copy of a dataset has the wrong id/item counts."""


# Official (ids, items) per split, counted as `check_statistics` counts them:
# ids are the distinct pids of the parsed split (`num_pids`, so a Market-style
# gallery's distractor pid 0 counts as one id) and items are images (or
# tracklets) after junk (pid -1) is dropped.
Stats = Mapping[str, tuple[int, int]]


def check_statistics(dataset: Dataset, expected: Stats) -> bool:
  """Checks a parsed dataset against its official per-split statistics.

  Only a copy that looks complete is checked: if every split has at least
  the expected number of ids and of items, any difference is an error (e.g.
  extra files copied in, a mixed-up release). If any count is below the
  official one, the copy is taken to be partial (a subset, a test fixture)
  and this is only logged.

  Args:
    dataset: the parsed index, an `ImageDataset` (items = images) or a
      `VideoDataset` (items = tracklets).
    expected: split name -> (ids, items), ids counted as the split's
      `num_pids` (distinct pids, distractor pid 0 included).

  Returns:
    True if the copy looked complete and matched; False if it is partial.

  Raises:
    StatisticsError: the copy looks complete but a count differs.
  """
  unit = "tracklets" if is_video(dataset) else "images"
  got = {k: (getattr(dataset, k).num_pids, len(getattr(dataset, k)))
         for k in expected}
  complete = all(g >= e for k in expected for g, e in zip(got[k], expected[k]))
  if not complete:
    _log.info("%s at %s looks like a partial copy (ids, %s) %s; official "
              "%s. Not checking statistics.", dataset.name, dataset.root,
              unit, got, dict(expected))
    return False
  bad = [f"{k}: got {got[k][0]} ids / {got[k][1]} {unit}, expected "
         f"{expected[k][0]} / {expected[k][1]}"
         for k in expected if got[k] != tuple(expected[k])]
  if bad:
    raise StatisticsError(
        f"{dataset.name} at {dataset.root!r} looks complete but does not match "
        f"the official statistics ({'; '.join(bad)}). Check that the folder "
        "holds exactly one, unmodified copy of the dataset.")
  return True


def candidate_roots(root: str, *, label: str, archive_dirs: tuple[str, ...],
                    help_text: str) -> list[str]:
  """[root, root/<archive dir>, ...]: where a dataset's files may sit.

  Raises:
    DatasetNotFoundError: `root` is not a folder (message ends with
      `help_text`).
  """
  if not os.path.isdir(root):
    raise DatasetNotFoundError(
        f"{label} root {root!r} does not exist or is not a folder.\n"
        f"{help_text}")
  return [root] + [os.path.join(root, a) for a in archive_dirs]


def resolve_root(root: str, *, label: str, archive_dirs: tuple[str, ...],
                 splits: tuple[str, ...], help_text: str) -> str:
  """Returns the folder (root or root/<archive dir>) holding every `splits`.

  Raises:
    DatasetNotFoundError: no candidate holds them all; the message names the
      missing folders of the candidate that holds some, and `help_text`.
  """
  candidates = candidate_roots(root, label=label, archive_dirs=archive_dirs,
                               help_text=help_text)
  for cand in candidates:
    if all(os.path.isdir(os.path.join(cand, s)) for s in splits):
      return cand
  # Report against whichever candidate is partially there, so the message
  # names the folders that are actually missing rather than all of them.
  base = root
  for cand in candidates:
    if any(os.path.isdir(os.path.join(cand, s)) for s in splits):
      base = cand
      break
  missing = [s for s in splits if not os.path.isdir(os.path.join(base, s))]
  raise DatasetNotFoundError(
      f"{label} root {root!r} is missing split folder(s) "
      f"{', '.join(repr(m + '/') for m in missing)} (looked in {base!r}).\n"
      f"{help_text}")


def read_flat_split(folder: str, pattern: re.Pattern, *, label: str,
                    name_format: str, help_text: str,
                    ) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Parses every .jpg in a flat split folder whose names match `pattern`.

  Args:
    folder: the split folder (no subfolders are read).
    pattern: must define the groups ``pid`` and ``cam`` (camera, 1-based).
    label: dataset name for messages.
    name_format: the expected file name, for messages.
    help_text: the dataset's layout help, for messages.

  Returns:
    (N,) sorted paths, (N,) int32 raw pids and (N,) int32 0-based camids.

  Raises:
    LayoutError: no .jpg in the folder, or a .jpg name does not match.
  """
  # Non-.jpg files (Thumbs.db, README) and macOS '._' resource forks are
  # not images of the dataset; anything else that ends in .jpg must parse.
  names = sorted(n for n in os.listdir(folder)
                 if n.lower().endswith(".jpg") and not n.startswith("."))
  if not names:
    raise LayoutError(
        f"Split folder {folder!r} contains no .jpg images.\n{help_text}")
  paths, pids, camids = [], [], []
  for n in names:
    m = pattern.match(n)
    if m is None:
      raise LayoutError(
          f"Image file name {n!r} in {folder!r} does not match the {label} "
          f"pattern {name_format}. Remove or rename it.")
    paths.append(os.path.join(folder, n))
    pids.append(int(m["pid"]))
    camids.append(int(m["cam"]) - 1)
  return paths, np.asarray(pids, np.int32), np.asarray(camids, np.int32)


def contiguous_labels(pids: np.ndarray) -> np.ndarray:
  """(N,) int32 labels 0..P-1 of (N,) pids, in sorted order of the pid.

  E.g. pids [7, 2, 7, 15] -> [1, 0, 1, 2]. Depends only on the set of pids,
  never on item order, so every process derives the same labels.
  """
  _, labels = np.unique(np.asarray(pids), return_inverse=True)
  return labels.reshape(-1).astype(np.int32)


def image_split_where(paths, pids: np.ndarray, camids: np.ndarray,
                      keep: np.ndarray) -> ImageSplit:
  """The `ImageSplit` of the items where the (N,) bool mask `keep` holds."""
  idx = np.flatnonzero(keep)
  return ImageSplit(paths=tuple(paths[i] for i in idx),
                    pids=np.asarray(pids)[idx].astype(np.int32),
                    camids=np.asarray(camids)[idx].astype(np.int32))


def relabel_train(split: ImageSplit) -> ImageSplit:
  """`split` with its pids replaced by `contiguous_labels` (train splits)."""
  return ImageSplit(split.paths, contiguous_labels(split.pids), split.camids)
