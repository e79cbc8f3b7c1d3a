"""NumPy reference implementations of the Market-1501 ranking protocol.

Deliberately plain implementations of what the jitted evaluator computes;
they exist for the tests and the benchmarks, not for production use:

* ``evaluate_ranking_loop``: the classic torchreid-style per-query loop.
* ``evaluate_ranking_vectorized_numpy``: the same, vectorised over blocks of
  queries (one ``argsort`` per row of a block).
* ``evaluate_cuhk03_loop``: the CUHK03 single-gallery-shot protocol.
* ``k_reciprocal_rerank``: Zhong et al.'s re-ranking, transcribed from the
  paper with loops.

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

from reidjax.evaluate.protocols import RankingMetrics


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


def evaluate_cuhk03_loop(distmat, query_pids, gallery_pids, query_camids,
                         gallery_camids, max_rank: int = 50,
                         num_repeats: int = 10, seed: int = 0
                         ) -> RankingMetrics:
  """CUHK03 single-gallery-shot protocol, torchreid ``eval_cuhk03`` style.

  Per query: the kept list (removed items dropped) gives AP and INP as in
  ``evaluate_ranking_loop``. For the CMC, in each repeat every gallery pid
  keeps one of its kept items (listed in ascending gallery index): item
  ``floor(u * n)`` (clamped to n - 1) with u the repeat's draw for that pid
  (``metrics.single_shot_uniforms``, a NumPy hash, so that both paths see the
  same random numbers); as torchreid's mask over the ranked list, the kept
  items are ranked by a stable argsort of their distances in gallery order,
  and the curve marks the first match. Curves are averaged over repeats, then
  queries.
  """
  from reidjax.evaluate import metrics  # pylint: disable=g-import-not-at-top
  distmat, q_pids, g_pids, q_camids, g_camids = _as_arrays(
      distmat, query_pids, gallery_pids, query_camids, gallery_camids)
  num_q = distmat.shape[0]
  # Gallery items grouped by pid (ascending), each group in gallery order.
  by_pid = np.argsort(g_pids, kind="stable")
  pids, starts, sizes = np.unique(g_pids[by_pid], return_index=True,
                                  return_counts=True)
  draws = metrics.single_shot_uniforms(seed, np.arange(num_q), num_repeats,
                                       pids.size)
  all_cmc, all_ap, all_inp = [], [], []
  num_skipped = 0
  for q in range(num_q):
    kept = ~((g_pids == q_pids[q]) & (g_camids == q_camids[q]))
    order = np.argsort(distmat[q], kind="stable")
    raw_cmc = (g_pids[order][kept[order]] == q_pids[q]).astype(np.int64)
    if not raw_cmc.any():
      num_skipped += 1
      continue
    match_ranks = np.flatnonzero(raw_cmc)
    m = match_ranks.size
    all_ap.append(np.mean(np.arange(1, m + 1) / (match_ranks + 1.0)))
    all_inp.append(m / (match_ranks[-1] + 1.0))

    own_slot = int(np.searchsorted(pids, q_pids[q]))
    own_items = np.flatnonzero(kept & (g_pids == q_pids[q]))  # ascending
    curve = np.zeros(max_rank)
    for r in range(num_repeats):
      n = sizes.astype(np.float32)
      pick = np.minimum(np.floor(draws[q, r] * n).astype(np.int64),
                        sizes - 1)
      chosen = by_pid[starts + pick]
      own_pick = int(np.floor(draws[q, r, own_slot] * np.float32(m)))
      chosen[own_slot] = own_items[min(own_pick, m - 1)]
      chosen = np.sort(chosen)  # Gallery order, as the mask keeps it.
      ranked = chosen[np.argsort(distmat[q, chosen], kind="stable")]
      hit = np.minimum((g_pids[ranked] == q_pids[q]).cumsum(), 1)
      k = min(max_rank, hit.size)
      one = np.full(max_rank, hit[-1], np.float64)
      one[:k] = hit[:k]
      curve += one
    all_cmc.append(curve / num_repeats)
  return _finish(all_cmc, all_ap, all_inp, num_skipped)


def k_reciprocal_rerank(q_g_dist, q_q_dist, g_g_dist, k1: int = 20,
                        k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
  """Zhong et al., CVPR 2017, "Re-ranking Person Re-identification with
  k-reciprocal Encoding": a plain NumPy transcription of Sec. 3-4.

  All P = Q + G items are probes and gallery at once:

  1. original distance d: the (P, P) matrix [[qq, qg], [qg^T, gg]], each
     column divided by its maximum, then transposed (as the authors' code;
     for a symmetric matrix: each row divided by its maximum).
  2. N(p, k): the k + 1 nearest items of p (itself included), stable order.
     R(p, k) = {g in N(p, k) : p in N(g, k)} (Eq. 3).
  3. R*(p, k1) = R(p, k1) u R(c, k1/2) for every c in R(p, k1) with
     |R(c, k1/2) n R(p, k1)| > 2/3 |R(c, k1/2)| (Eq. 6; k1/2 rounded).
  4. V_p,g = exp(-d(p, g)) on R*(p, k1), 0 elsewhere, divided by the row sum
     (Eq. 7, L1-normalised as the authors' code).
  5. Local query expansion (Eq. 11): V_p <- mean of V_g over the k2 nearest
     g of p (p included).
  6. Jaccard distance (Eq. 10): d_J(p, g) = 1 - sum min(V_p, V_g) /
     sum max(V_p, V_g) = 1 - m / (2 - m) with m = sum min (rows sum to 1).
  7. final = (1 - lambda) d_J + lambda d; the (Q, G) block is returned.

  Args:
    q_g_dist: (Q, G); q_q_dist: (Q, Q); g_g_dist: (G, G) distances.
    k1, k2, lambda_value: the paper's parameters (20, 6, 0.3).

  Returns:
    (Q, G) float32 re-ranked distances.
  """
  q_g = np.asarray(q_g_dist, np.float32)
  num_q = q_g.shape[0]
  original = np.concatenate([
      np.concatenate([np.asarray(q_q_dist, np.float32), q_g], axis=1),
      np.concatenate([q_g.T, np.asarray(g_g_dist, np.float32)], axis=1)])
  dist = np.transpose(original / np.max(original, axis=0))
  num = dist.shape[0]
  rank = np.argsort(dist, axis=1, kind="stable")
  half = int(np.around(k1 / 2.0))

  def reciprocal(p, k):
    forward = rank[p, :k + 1]
    return [g for g in forward if p in rank[g, :k + 1]]

  v = np.zeros((num, num), np.float32)
  for p in range(num):
    r_p = reciprocal(p, k1)
    expanded = set(r_p)
    for c in r_p:
      r_c = reciprocal(c, half)
      if 3 * len(set(r_c) & set(r_p)) > 2 * len(r_c):
        expanded.update(r_c)
    idx = np.array(sorted(expanded))
    weight = np.exp(-dist[p, idx])
    v[p, idx] = weight / np.sum(weight)
  if k2 != 1:
    v = np.stack([np.mean(v[rank[p, :k2]], axis=0) for p in range(num)])
  jaccard = np.zeros((num_q, num), np.float32)
  for p in range(num_q):
    common = np.minimum(v[p][None, :], v).sum(axis=1)
    jaccard[p] = 1.0 - common / (2.0 - common)
  final = (1.0 - lambda_value) * jaccard + lambda_value * dist[:num_q]
  return final[:, num_q:].astype(np.float32)
