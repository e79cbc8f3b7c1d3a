"""NumPy reference implementations of the Market-1501 ranking protocol.

Two independent, deliberately plain implementations of exactly what
``reidjax.evaluate.metrics.evaluate_ranking`` computes; they exist for the
tests and the benchmark, not for production use:

* ``evaluate_ranking_loop``: the classic torchreid-style per-query loop.
* ``evaluate_ranking_vectorized_numpy``: the same, vectorised over blocks of
  queries (one ``argsort`` per row of a block).

Protocol (shared with ``metrics.evaluate_ranking``), for each query:

* gallery items with the query's pid AND camid are removed (neither matches
  nor non-matches); pid 0 distractors are ordinary non-matches;
* the remaining items are ranked by ascending distance, ties broken by gallery
  index (the order of a *stable* argsort);
* a query with no remaining same-pid item is skipped and counted;
* CMC(k) = 1 if the first match is in the top k (cumsum clipped at 1; when
  fewer than ``max_rank`` items remain the curve is padded with its last
  value); AP = mean over the m matches (in rank order, j = 1..m) of
  j / (rank_j + 1) with 0-based ranks; INP = m / (rank_m + 1).

Both return a ``metrics.RankingMetrics`` and raise ``ValueError`` when no query
has a match.
"""

from __future__ import annotations

import numpy as np

from reidjax.evaluate.metrics import RankingMetrics


def _as_arrays(distmat, query_pids, gallery_pids, query_camids, gallery_camids):
  distmat = np.asarray(distmat)
  if distmat.ndim != 2:
    raise ValueError(f"distmat must be 2-D, got shape {distmat.shape}.")
  return (distmat, np.asarray(query_pids), np.asarray(gallery_pids),
          np.asarray(query_camids), np.asarray(gallery_camids))


def _finish(all_cmc, all_ap, all_inp, num_skipped) -> RankingMetrics:
  if not all_ap:
    raise ValueError("No query has a match in the gallery (all "
                     f"{num_skipped} queries skipped).")
  return RankingMetrics(
      cmc=np.mean(np.asarray(all_cmc, dtype=np.float64), axis=0),
      mAP=float(np.mean(all_ap)),
      mINP=float(np.mean(all_inp)),
      num_valid_queries=len(all_ap),
      num_skipped_queries=int(num_skipped))


def evaluate_ranking_loop(distmat, query_pids, gallery_pids, query_camids,
                          gallery_camids, max_rank: int = 50) -> RankingMetrics:
  """Per-query Python loop (torchreid style); the readable reference.

  Args:
    distmat: (Q, G) distances, smaller = more similar.
    query_pids, query_camids: (Q,) integer labels.
    gallery_pids, gallery_camids: (G,) integer labels.
    max_rank: length of the CMC curve.

  Returns:
    ``RankingMetrics`` with a (max_rank,) CMC curve.
  """
  distmat, q_pids, g_pids, q_camids, g_camids = _as_arrays(
      distmat, query_pids, gallery_pids, query_camids, gallery_camids)
  all_cmc, all_ap, all_inp = [], [], []
  num_skipped = 0
  for q in range(distmat.shape[0]):
    order = np.argsort(distmat[q], kind="stable")
    remove = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
    raw_cmc = (g_pids[order][~remove] == q_pids[q]).astype(np.int64)
    if not raw_cmc.any():
      num_skipped += 1
      continue

    cmc = raw_cmc.cumsum()
    cmc[cmc > 1] = 1
    curve = np.full(max_rank, cmc[-1], dtype=np.float64)  # pad: last value
    n = min(max_rank, cmc.size)
    curve[:n] = cmc[:n]
    all_cmc.append(curve)

    match_ranks = np.flatnonzero(raw_cmc)  # 0-based, ascending
    m = match_ranks.size
    all_ap.append(np.mean(np.arange(1, m + 1) / (match_ranks + 1.0)))
    all_inp.append(m / (match_ranks[-1] + 1.0))
  return _finish(all_cmc, all_ap, all_inp, num_skipped)


def evaluate_ranking_vectorized_numpy(distmat, query_pids, gallery_pids,
                                      query_camids, gallery_camids,
                                      max_rank: int = 50,
                                      block: int = 32) -> RankingMetrics:
  """Vectorised NumPy version: stable-argsorts whole blocks of query rows.

  Args:
    distmat: (Q, G) distances, smaller = more similar.
    query_pids, query_camids: (Q,) integer labels.
    gallery_pids, gallery_camids: (G,) integer labels.
    max_rank: length of the CMC curve.
    block: queries per block (memory is a few (block, G) arrays).

  Returns:
    ``RankingMetrics`` with a (max_rank,) CMC curve.
  """
  distmat, q_pids, g_pids, q_camids, g_camids = _as_arrays(
      distmat, query_pids, gallery_pids, query_camids, gallery_camids)
  num_q, num_g = distmat.shape
  all_cmc, all_ap, all_inp = [], [], []
  num_skipped = 0
  for start in range(0, num_q, block):
    stop = min(start + block, num_q)
    order = np.argsort(distmat[start:stop], axis=1, kind="stable")  # (B, G)
    same_pid = g_pids[order] == q_pids[start:stop, None]
    keep = ~(same_pid & (g_camids[order] == q_camids[start:stop, None]))
    match = same_pid & keep
    # 0-based rank of each sorted item among the kept ones.
    rank = np.cumsum(keep, axis=1) - 1
    num_matches = match.sum(axis=1)
    valid = num_matches > 0
    num_skipped += int((~valid).sum())
    match, rank, m = match[valid], rank[valid], num_matches[valid]
    if not m.size:
      continue
    rows = np.arange(m.size)

    first_rank = rank[rows, np.argmax(match, axis=1)]
    all_cmc.extend(first_rank[:, None] <= np.arange(max_rank)[None, :])

    hits = np.cumsum(match, axis=1)  # j for the j-th match
    # where=match: rank is -1 before the first kept item.
    precision = np.divide(hits, rank + 1.0, out=np.zeros(hits.shape),
                          where=match)
    all_ap.extend(precision.sum(axis=1) / m)

    last = num_g - 1 - np.argmax(match[:, ::-1], axis=1)
    all_inp.extend(m / (rank[rows, last] + 1.0))
  return _finish(all_cmc, all_ap, all_inp, num_skipped)
