"""Video ReID evaluation: a tracklet is one item.

MARS / iLIDS-VID / PRID-2011 (Zheng et al., ECCV 2016, "MARS") rank whole
tracklets: per-frame or per-clip features are pooled into one feature per
tracklet (mean or max, the two usual choices), and the tracklets are then
ranked with the image protocols of ``metrics.py`` / ``streaming.py`` (MARS
uses the Market-1501 protocol on tracklets).

* ``pool_clips``: (T, C, D) features of C clips (or frames) per tracklet,
  with an optional (T, C) validity mask -> (T, D).
* ``aggregate_tracklets``: (N, D) features of N frames/clips tagged with
  their tracklet id -> (T, D) in ascending id order, plus per-tracklet pid and
  camid (which must agree within a tracklet).
"""

from __future__ import annotations

import numpy as np

POOLING = ("mean", "max")


def _check_method(method: str) -> None:
  if method not in POOLING:
    raise ValueError(f"method must be one of {POOLING}, got {method!r}.")


def pool_clips(features, mask=None, method: str = "mean") -> np.ndarray:
  """(T, C, D) per-clip features -> (T, D) tracklet features.

  Args:
    features: (T, C, D) array.
    mask: optional (T, C) bool, False for padded clips; every tracklet needs
      at least one valid clip.
    method: ``"mean"`` or ``"max"`` over the valid clips.

  Returns:
    (T, D) float array (float64 for float64 input, else float32).
  """
  _check_method(method)
  x = np.asarray(features)
  if x.ndim != 3:
    raise ValueError(f"features must be (T, C, D), got shape {x.shape}.")
  x = x.astype(np.promote_types(x.dtype, np.float32), copy=False)
  if mask is None:
    return x.mean(axis=1) if method == "mean" else x.max(axis=1)
  mask = np.asarray(mask, bool)
  if mask.shape != x.shape[:2]:
    raise ValueError(f"mask must be (T, C) = {x.shape[:2]}, got {mask.shape}.")
  empty = ~mask.any(axis=1)
  if empty.any():
    raise ValueError(f"Tracklet {np.argmax(empty)} has no valid clip.")
  if method == "mean":
    return (np.where(mask[..., None], x, 0).sum(axis=1)
            / mask.sum(axis=1, keepdims=True).astype(x.dtype))
  return np.where(mask[..., None], x, -np.inf).max(axis=1).astype(x.dtype)


def aggregate_tracklets(features, tracklet_ids, pids=None, camids=None,
                        method: str = "mean"):
  """Pools per-frame (or per-clip) features into per-tracklet features.

  Args:
    features: (N, D) features.
    tracklet_ids: (N,) integer id of the tracklet of each row.
    pids, camids: optional (N,) labels; each must be constant within a
      tracklet.
    method: ``"mean"`` or ``"max"``.

  Returns:
    dict with ``ids`` (T,) ascending tracklet ids, ``features`` (T, D), and
    ``pids`` / ``camids`` (T,) when given.

  Raises:
    ValueError: bad shapes, or labels that change within a tracklet.
  """
  _check_method(method)
  x = np.asarray(features)
  ids = np.asarray(tracklet_ids)
  if x.ndim != 2 or ids.shape != (x.shape[0],) or not x.shape[0]:
    raise ValueError(f"features (N, D) and tracklet_ids (N,) expected, got "
                     f"{x.shape} and {ids.shape}.")
  x = x.astype(np.promote_types(x.dtype, np.float32), copy=False)
  order = np.argsort(ids, kind="stable")
  unique, start, count = np.unique(ids[order], return_index=True,
                                   return_counts=True)
  sorted_x = x[order]
  if method == "mean":
    pooled = np.add.reduceat(sorted_x, start, axis=0) / count[:, None].astype(
        x.dtype)
  else:
    pooled = np.maximum.reduceat(sorted_x, start, axis=0)
  out = {"ids": unique, "features": pooled}
  for name, labels in (("pids", pids), ("camids", camids)):
    if labels is None:
      continue
    labels = np.asarray(labels)
    if labels.shape != ids.shape:
      raise ValueError(f"{name} must be (N,) = {ids.shape}, got "
                       f"{labels.shape}.")
    sorted_labels = labels[order]
    first = sorted_labels[start]
    changes = sorted_labels != np.repeat(first, count)
    if changes.any():
      bad = ids[order][np.argmax(changes)]
      raise ValueError(f"{name} change within tracklet {bad}.")
    out[name] = first
  return out
