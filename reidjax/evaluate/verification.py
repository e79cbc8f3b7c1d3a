"""Verification metrics: TPR at fixed FPR over all query-gallery pairs, streamed.

The ROC of "same identity?" decided by thresholding the distance (as
fast-reid's evaluator reports it; Face/ReID verification practice): every
(query, gallery) pair is one trial,

* positive: same pid (and, with the camera filter, a different camera);
* negative: different pid;
* same pid and same camera: removed, as in the ranking protocol
  (``metrics.py``; without the camera filter they are positives).

A pair is accepted when its distance is < t. For each target FPR f, t is
the largest threshold with at most floor(f N_neg) accepted negatives: the
(floor(f N_neg) + 1)-th smallest negative distance (+inf when that exceeds
N_neg); TPR(f) = #{positives with d < t} / N_pos, and the FPR actually
reached #{negatives with d < t} / N_neg <= f is reported beside it (ties at
t are all rejected).

Streamed: rows of distances (a matrix, or from features one query tile at a
time) are reduced on the host to the positives' distances (about Q x 27 at
MSMT17) and the smallest floor(max f x N_neg) + 1 negatives (``np.partition``
per tile); never the (Q, G) matrix. From features this is one extra pass of
distance tiles beside the ranking.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from reidjax.evaluate import distance, streaming

DEFAULT_FPRS = (1e-4, 1e-3, 1e-2)


def _labels(query_pids, gallery_pids, query_camids, gallery_camids,
            camera_filter: bool):
  q_pids, g_pids = np.asarray(query_pids), np.asarray(gallery_pids)
  if camera_filter:
    if query_camids is None or gallery_camids is None:
      raise ValueError("query_camids and gallery_camids are required with "
                       "camera_filter=True.")
    q_cam, g_cam = np.asarray(query_camids), np.asarray(gallery_camids)
  else:
    q_cam = np.zeros(q_pids.size, np.int64)
    g_cam = np.ones(g_pids.size, np.int64)  # Never the query's camera.
  return q_pids, g_pids, q_cam, g_cam


def roc_from_rows(rows: Iterable[tuple[np.ndarray, np.ndarray]],
                  query_pids, gallery_pids, query_camids, gallery_camids, *,
                  fprs=DEFAULT_FPRS, camera_filter: bool = True
                  ) -> dict[str, Any]:
  """TPR at each FPR from ``(query indices, (n, G) distances)`` row blocks.

  Returns a dict: ``tpr@fpr=<f>``, ``fpr@fpr=<f>`` (reached),
  ``threshold@fpr=<f>``, ``num_positive_pairs``, ``num_negative_pairs``.
  """
  fprs = tuple(float(f) for f in fprs)
  if not fprs or any(not 0 < f < 1 for f in fprs):
    raise ValueError(f"fprs must be in (0, 1), got {fprs}.")
  q_pids, g_pids, q_cam, g_cam = _labels(
      query_pids, gallery_pids, query_camids, gallery_camids, camera_filter)
  # Pairs of one pid: count per pid on both sides.
  pids, g_count = np.unique(g_pids, return_counts=True)
  at = np.searchsorted(pids, q_pids)
  same = np.where((at < pids.size) & (pids[np.minimum(at, pids.size - 1)]
                                      == q_pids), g_count[np.minimum(
                                          at, pids.size - 1)], 0)
  num_neg = int(q_pids.size * g_pids.size - same.sum())
  keep = min(num_neg, int(np.floor(max(fprs) * num_neg)) + 1)
  negatives = np.empty(0, np.float32)
  positives = []
  seen = np.zeros(q_pids.size, bool)
  for qi, d in rows:
    qi = np.asarray(qi)
    d = np.asarray(d, np.float32)
    if np.isnan(d).any():
      raise ValueError("The distances contain NaN; they cannot be ranked.")
    seen[qi] = True
    is_same = q_pids[qi][:, None] == g_pids[None, :]
    is_pos = is_same & (q_cam[qi][:, None] != g_cam[None, :])
    positives.append(d[is_pos])
    negatives = np.concatenate([negatives, d[~is_same]])
    if negatives.size > keep:
      negatives = np.partition(negatives, keep - 1)[:keep]
  if not seen.all():
    raise ValueError("roc_from_rows got distances for only "
                     f"{int(seen.sum())} of {seen.size} queries.")
  positives = np.sort(np.concatenate(positives))
  negatives = np.sort(negatives)
  out = dict(num_positive_pairs=int(positives.size),
             num_negative_pairs=num_neg)
  for f in fprs:
    k = int(np.floor(f * num_neg))
    t = float(negatives[k]) if k < negatives.size and k < num_neg else np.inf
    accepted_neg = int(np.searchsorted(negatives, t, side="left"))
    tpr = (np.searchsorted(positives, t, side="left") / positives.size
           if positives.size else float("nan"))
    out[f"tpr@fpr={f:g}"] = float(tpr)
    out[f"fpr@fpr={f:g}"] = accepted_neg / num_neg if num_neg else 0.0
    out[f"threshold@fpr={f:g}"] = t
  return out


def roc_from_distmat(distmat, query_pids, gallery_pids, query_camids,
                     gallery_camids, *, fprs=DEFAULT_FPRS,
                     camera_filter: bool = True, row_tile: int = 1024
                     ) -> dict[str, Any]:
  """``roc_from_rows`` over a (Q, G) matrix, ``row_tile`` rows at a time."""
  distmat = np.asarray(distmat)
  num_q = distmat.shape[0]
  blocks = ((np.arange(lo, min(lo + row_tile, num_q)),
             distmat[lo:lo + row_tile]) for lo in range(0, num_q, row_tile))
  return roc_from_rows(blocks, query_pids, gallery_pids, query_camids,
                       gallery_camids, fprs=fprs, camera_filter=camera_filter)


_distance_tile = jax.jit(streaming.side_distance, static_argnames=("metric",))


def roc_from_features(query_features, gallery_features, query_pids,
                      gallery_pids, query_camids, gallery_camids, *,
                      metric: str = "euclidean", normalize: bool = False,
                      eps: float = 1e-12, fprs=DEFAULT_FPRS,
                      camera_filter: bool = True, query_tile: int = 256
                      ) -> dict[str, Any]:
  """``roc_from_rows`` from features, one (query_tile, G) tile at a time."""
  distance.check_metric(metric)
  prep = functools.partial(streaming.prepare_side, metric=metric,
                           normalize=bool(normalize), eps=float(eps))
  q = jax.tree.map(np.asarray, prep(np.asarray(query_features)))
  g = prep(jnp.asarray(gallery_features))
  num_q = q["features"].shape[0]
  tile = int(min(query_tile, num_q))

  def blocks():
    for lo in range(0, num_q, tile):
      n = min(tile, num_q - lo)
      rows = jax.tree.map(lambda x: np.pad(
          x[lo:lo + n], [(0, tile - n)] + [(0, 0)] * (x.ndim - 1)), q)
      yield np.arange(lo, lo + n), np.asarray(
          _distance_tile(rows, g, metric=metric))[:n]

  return roc_from_rows(blocks(), query_pids, gallery_pids, query_camids,
                       gallery_camids, fprs=fprs, camera_filter=camera_filter)
