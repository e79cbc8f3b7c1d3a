"""Ranking protocols for ReID: who matches whom, CMC, mAP and mINP; Market-1501 and CUHK03.

Protocol ``"market1501"`` (Zheng et al., ICCV 2015; torchreid ``eval_market1501``),
for each query and its row of G distances (smaller = more similar):

* gallery items with the query's pid AND camid are removed: they are neither
  matches nor non-matches. pid 0 distractors are ordinary non-matches (junk,
  pid -1, is expected to be excluded upstream; here -1 would be a plain pid).
  With ``camera_filter=False`` nothing is removed (for data without camera
  ids; results are then optimistic, and a warning says so).
* matches are the remaining items with the query's pid. A query without one
  is skipped and counted in ``num_skipped_queries``, not averaged in.
* the remaining items are ranked by ascending distance, **ties broken by
  gallery index** (exactly the order of a stable argsort of the row).
* CMC(k) = 1 if the first match is in the top k, k = 1..max_rank (the curve
  stays 1 beyond the last remaining item); AP = mean over the m matches
  (rank order, j = 1..m) of j / (rank_j + 1) with 0-based ranks;
  INP = m / (rank_m + 1) (Ye et al., TPAMI 2021). All three are averaged over
  the valid queries.

Protocol ``"cuhk03"`` (Li et al., CVPR 2014, "DeepReID"; torchreid
``eval_cuhk03``, the ``use_metric_cuhk03`` single-gallery-shot rule): AP and
INP as above on the full list; CMC is single-shot: in each of ``num_repeats``
repeats, every gallery pid keeps ONE random item (for the query's own pid: one
of its matches; removed items are never drawn), and CMC(k) = 1 if the kept
match is in the top k of the kept items. The curve is averaged over repeats,
then over queries. The draws are a counter-based hash, u[q, r, p] in [0, 1)
for query q, repeat r and gallery pid slot p (pids ascending; the own pid's
slot is used for its matches; see ``single_shot_uniforms``): the group keeps
item ``floor(u * n)`` (n = group size, clamped to n - 1) in ascending gallery
index. They depend only on (seed, q, r, p), not on tiling or devices, so a
result is reproducible, and the NumPy reference can draw the same numbers.

The counting engines that find the match ranks are in ``counting.py``;
``metrics.evaluate_ranking`` runs them on a distance matrix.
"""

from __future__ import annotations

import dataclasses
from typing import Any
import warnings

import jax
import jax.numpy as jnp
import numpy as np

PROTOCOLS = ("market1501", "cuhk03")
METHODS = ("auto", "count", "head")

# Power-of-two floors for the padded number of matches / removed items per
# query: fewer distinct compiled shapes for little extra work.
_MIN_MATCH_PAD = 8
_MIN_REMOVED_PAD = 4


@dataclasses.dataclass(frozen=True, eq=False)
class RankingMetrics:
  """Result of a ranking evaluation.

  Attributes:
    cmc: (max_rank,) float64 CMC curve; ``cmc[k - 1]`` is rank-k accuracy.
    mAP: mean average precision over the valid queries.
    mINP: mean inverse negative penalty over the valid queries.
    num_valid_queries: queries with at least one match.
    num_skipped_queries: queries without a match (not averaged in).
  """

  cmc: np.ndarray
  mAP: float  # pylint: disable=invalid-name
  mINP: float  # pylint: disable=invalid-name
  num_valid_queries: int
  num_skipped_queries: int

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready dict: ``rank1``/``rank5``/``rank10`` (when within the curve),
    ``mAP``, ``mINP``, the counts and the full curve as ``cmc``."""
    out = {f"rank{k}": float(self.cmc[k - 1])
           for k in (1, 5, 10) if k <= self.cmc.size}
    out.update(mAP=float(self.mAP), mINP=float(self.mINP),
               num_valid_queries=int(self.num_valid_queries),
               num_skipped_queries=int(self.num_skipped_queries),
               cmc=[float(x) for x in self.cmc])
    return out


def _bucket(n: int, minimum: int) -> int:
  """Smallest power of two >= max(n, minimum)."""
  return 1 << (max(int(n), minimum) - 1).bit_length()


# ----------------------------------------------------------------------------
# Labels: who matches whom.


@dataclasses.dataclass(frozen=True, eq=False)
class Matches:
  """Per query, the gallery items with its pid (host arrays).

  Attributes:
    match_idx: (Q, M) int32 gallery indices of the matches (same pid, other
      camera), left-aligned, padded with 0, in no particular order.
    num_matches: (Q,) int64.
    removed_idx: (Q, K) int32 gallery indices of the removed items (same pid,
      same camera), likewise.
    num_removed: (Q,) int64.
    num_gallery: G.
  M and K are powers of two (``_bucket``).
  """

  match_idx: np.ndarray
  num_matches: np.ndarray
  removed_idx: np.ndarray
  num_removed: np.ndarray
  num_gallery: int

  @property
  def removed_mask(self) -> np.ndarray:
    """(Q, K) bool, False on padding."""
    return (np.arange(self.removed_idx.shape[1])[None, :]
            < self.num_removed[:, None])


def _same_pid_items(q_pids, g_pids, q_camids, g_camids):
  """Returns (match_idx, num_matches, removed_idx, num_removed); see Matches."""
  # Sort the gallery by a (pid, camid) key: a query's pid group and its
  # (pid, camid) subgroup are then contiguous ranges, found by bisection.
  pid_min = min(q_pids.min(), g_pids.min())
  cam_min = min(q_camids.min(), g_camids.min())
  num_cams = max(q_camids.max(), g_camids.max()) - cam_min + 1
  g_key = (g_pids - pid_min) * num_cams + (g_camids - cam_min)
  q_pid_key = (q_pids - pid_min) * num_cams
  order = np.argsort(g_key, kind="stable")
  sorted_key = g_key[order]
  pid_lo = np.searchsorted(sorted_key, q_pid_key, side="left")
  pid_hi = np.searchsorted(sorted_key, q_pid_key + num_cams, side="left")
  cam_lo = np.searchsorted(sorted_key, q_pid_key + q_camids - cam_min, "left")
  cam_hi = np.searchsorted(sorted_key, q_pid_key + q_camids - cam_min, "right")
  num_removed = cam_hi - cam_lo
  num_matches = pid_hi - pid_lo - num_removed

  # Matches are [pid_lo, cam_lo) followed by [cam_hi, pid_hi).
  slot = np.arange(_bucket(num_matches.max(), _MIN_MATCH_PAD))[None, :]
  before = (cam_lo - pid_lo)[:, None]
  pos = np.where(slot < before, pid_lo[:, None] + slot,
                 cam_hi[:, None] + slot - before)
  match_idx = np.where(slot < num_matches[:, None],
                       order[np.minimum(pos, len(order) - 1)], 0)
  slot = np.arange(_bucket(num_removed.max(), _MIN_REMOVED_PAD))[None, :]
  removed_idx = np.where(slot < num_removed[:, None],
                         order[np.minimum(cam_lo[:, None] + slot,
                                          len(order) - 1)], 0)
  return (match_idx.astype(np.int32), num_matches,
          removed_idx.astype(np.int32), num_removed)


def _check_labels(name: str, labels, expected: int, ref: str) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (expected,):
    raise ValueError(f"{name} has shape {labels.shape} but {ref}: expected "
                     f"({expected},).")
  if not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"{name} must hold integers, got dtype {labels.dtype}.")
  return labels.astype(np.int64, copy=False)


def prepare_matches(num_query: int, num_gallery: int, query_pids, gallery_pids,
                    query_camids, gallery_camids, *, camera_filter: bool = True,
                    what: str = "distmat") -> tuple[Matches, dict[str, Any]]:
  """Checks the labels and finds every query's matches and removed items.

  Args:
    num_query, num_gallery: Q and G.
    query_pids, query_camids: (Q,) integer labels (camids may be None when
      ``camera_filter`` is False).
    gallery_pids, gallery_camids: (G,) integer labels.
    camera_filter: remove same-pid same-camera items (the standard protocol).
      False: nothing is removed, with a warning that results are optimistic.
    what: how the caller names Q x G in error messages.

  Returns:
    (``Matches``, labels) where labels holds the int64 ``q_pids``, ``g_pids``,
    ``q_camids``, ``g_camids`` (camids all 0 without the camera filter).
  """
  ref = f"{what} has shape ({num_query}, {num_gallery})"
  q_pids = _check_labels("query_pids", query_pids, num_query, ref)
  g_pids = _check_labels("gallery_pids", gallery_pids, num_gallery, ref)
  if camera_filter:
    if query_camids is None or gallery_camids is None:
      raise ValueError("query_camids and gallery_camids are required with "
                       "camera_filter=True; pass camera_filter=False for data "
                       "without camera ids.")
    q_camids = _check_labels("query_camids", query_camids, num_query, ref)
    g_camids = _check_labels("gallery_camids", gallery_camids, num_gallery, ref)
  else:
    warnings.warn(
        "camera_filter=False: same-camera gallery items of the query's "
        "identity count as matches, so CMC/mAP are optimistic and not "
        "comparable with published (camera-filtered) results.", stacklevel=3)
    for name, camids, n in (("query_camids", query_camids, num_query),
                            ("gallery_camids", gallery_camids, num_gallery)):
      if camids is not None:
        _check_labels(name, camids, n, ref)
    q_camids = np.zeros(num_query, np.int64)
    g_camids = np.zeros(num_gallery, np.int64)
  # Without the filter: a query camera (1) no gallery item has.
  match_idx, num_matches, removed_idx, num_removed = _same_pid_items(
      q_pids, g_pids, q_camids if camera_filter else q_camids + 1, g_camids)
  matches = Matches(match_idx, num_matches, removed_idx, num_removed,
                    num_gallery)
  labels = dict(q_pids=q_pids, g_pids=g_pids, q_camids=q_camids,
                g_camids=g_camids)
  return matches, labels


# ----------------------------------------------------------------------------
# Summaries.


def summarize_ranks(ranks: np.ndarray, num_matches: np.ndarray):
  """Per valid query AP, INP and first-match rank, from its match ranks.

  Args:
    ranks: (n, M) 0-based match ranks; entries j >= num_matches are ignored.
    num_matches: (n,) >= 1.

  Returns:
    (ap (n,), inp (n,), first_rank (n,)) float64, float64, int64.
  """
  m = np.asarray(num_matches, np.int64)
  slot = np.arange(ranks.shape[1])
  is_match = slot[None, :] < m[:, None]
  ranks = np.sort(np.where(is_match, ranks.astype(np.int64),
                           np.iinfo(np.int64).max), axis=1)
  ap = np.where(is_match, (slot + 1.0) / (ranks + 1.0), 0.0).sum(axis=1) / m
  inp = m / (ranks[np.arange(m.size), m - 1] + 1.0)
  return ap, inp, ranks[:, 0]


def cmc_from_first_ranks(first_ranks: np.ndarray, max_rank: int) -> np.ndarray:
  """cmc[k] = fraction of first-match ranks <= k; any shape of int ranks."""
  first_ranks = np.asarray(first_ranks, np.int64).reshape(-1)
  hist = np.bincount(np.minimum(first_ranks, max_rank),
                     minlength=max_rank + 1)
  return (np.cumsum(hist[:max_rank]) / first_ranks.size).astype(np.float64)


def finish_metrics(ranks: np.ndarray, num_matches: np.ndarray, max_rank: int,
                   num_query: int,
                   single_shot_ranks: np.ndarray | None = None
                   ) -> RankingMetrics:
  """RankingMetrics of the valid queries.

  Args:
    ranks: (n_valid, M) match ranks of the valid queries.
    num_matches: (n_valid,) their match counts (>= 1).
    max_rank: CMC length.
    num_query: all queries, valid or not.
    single_shot_ranks: optional (n_valid, R) CUHK03 first-match ranks among
      the sampled items; replaces the CMC.
  """
  if ranks.shape[0] == 0:
    raise ValueError(f"No query has a match in the gallery (all {num_query} "
                     "queries skipped): check the pids and camids.")
  ap, inp, first = summarize_ranks(ranks, num_matches)
  if single_shot_ranks is not None:
    first = single_shot_ranks
  return RankingMetrics(
      cmc=cmc_from_first_ranks(first, max_rank), mAP=float(np.mean(ap)),
      mINP=float(np.mean(inp)), num_valid_queries=int(ranks.shape[0]),
      num_skipped_queries=int(num_query - ranks.shape[0]))


# ----------------------------------------------------------------------------
# CUHK03 single-gallery-shot CMC.


@dataclasses.dataclass(frozen=True, eq=False)
class SingleShotGroups:
  """The gallery grouped by pid for single-shot sampling (host arrays).

  Attributes:
    gallery_order: (G,) int32 gallery indices sorted by (pid, index).
    group_start, group_size: (P,) int32 per gallery pid, ascending pid.
    query_group: (Q,) int32 group of the query's pid (0 if absent: such a
      query has no match and is skipped).
    own_idx: (Q, M) int32 the query's matches in ascending gallery index
      (padding: the last match).
  """

  gallery_order: np.ndarray
  group_start: np.ndarray
  group_size: np.ndarray
  query_group: np.ndarray
  own_idx: np.ndarray


def single_shot_groups(matches: Matches, labels: dict[str, np.ndarray]
                       ) -> SingleShotGroups:
  g_pids = labels["g_pids"]
  order = np.argsort(g_pids, kind="stable")
  pids, start, size = np.unique(g_pids[order], return_index=True,
                                return_counts=True)
  query_group = np.searchsorted(pids, labels["q_pids"])
  query_group = np.where(
      (query_group < pids.size)
      & (pids[np.minimum(query_group, pids.size - 1)] == labels["q_pids"]),
      query_group, 0)
  m = matches.num_matches
  slot = np.arange(matches.match_idx.shape[1])[None, :]
  own = np.sort(np.where(slot < m[:, None], matches.match_idx,
                         np.iinfo(np.int32).max), axis=1)
  last = own[np.arange(m.size), np.maximum(m - 1, 0)]
  own = np.where(slot < m[:, None], own, last[:, None])
  return SingleShotGroups(order.astype(np.int32), start.astype(np.int32),
                          size.astype(np.int32), query_group.astype(np.int32),
                          own.astype(np.int32))


def _fmix32(h, xp=jnp):
  """MurmurHash3's 32-bit finaliser (a bijection) of uint32 ``h``."""
  h = h ^ (h >> 16)
  h = h * xp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * xp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _single_shot_uniforms(seed, rows, *, num_repeats: int, num_groups: int):
  """(B, R, P) float32 draws in [0, 1) (see module doc), jax."""
  per_query = _fmix32(_fmix32(jnp.uint32(seed)) ^ rows.astype(jnp.uint32))
  slot = (jnp.arange(num_repeats, dtype=jnp.uint32)[:, None]
          * jnp.uint32(num_groups)
          + jnp.arange(num_groups, dtype=jnp.uint32)[None, :])
  h = _fmix32(per_query[:, None, None] ^ slot[None])
  return (h >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def single_shot_uniforms(seed: int, query_indices, num_repeats: int,
                         num_groups: int) -> np.ndarray:
  """The CUHK03 draws, NumPy: (n, num_repeats, num_groups) float32 in [0, 1).

  u[q, r, p] = (h >> 8) / 2**24 with h = fmix32(fmix32(fmix32(seed) ^ q) ^
  (r * num_groups + p)), uint32 arithmetic (fmix32: MurmurHash3's finaliser).
  """
  with np.errstate(over="ignore"):
    q = np.asarray(query_indices).astype(np.uint32)
    per_query = _fmix32(_fmix32(np.uint32(seed), np) ^ q, np)
    slot = (np.arange(num_repeats, dtype=np.uint32)[:, None]
            * np.uint32(num_groups)
            + np.arange(num_groups, dtype=np.uint32)[None, :])
    h = _fmix32(per_query[:, None, None] ^ slot[None], np)
  return (h >> 8).astype(np.float32) * np.float32(2.0**-24)


def single_shot_kernel(dist, rows, seed, query_group, own_idx, num_matches,
                       gallery_order, group_start, group_size, *,
                       num_repeats: int):
  """CUHK03 single-shot rank of the drawn match among the drawn items.

  Args:
    dist: (B, G) distances.
    rows: (B,) int32 global query indices (they key the draws).
    seed: uint32 scalar.
    query_group: (B,) int32 group of each query's pid.
    own_idx: (B, M) int32 matches in ascending gallery index.
    num_matches: (B,) int32 (rows with 0 return garbage).
    gallery_order, group_start, group_size: see ``SingleShotGroups``.
    num_repeats: R.

  Returns:
    (B, R) int32 0-based ranks.
  """
  num_p = group_start.shape[0]
  u = _single_shot_uniforms(seed, rows, num_repeats=num_repeats,
                            num_groups=num_p)  # (B, R, P)
  size = group_size.astype(jnp.float32)
  pick = jnp.minimum(jnp.floor(u * size).astype(jnp.int32), group_size - 1)
  items = gallery_order[group_start + pick]  # (B, R, P)
  u_own = jnp.take_along_axis(u, query_group[:, None, None], axis=2)[..., 0]
  n_own = jnp.maximum(num_matches, 1)
  own_pick = jnp.minimum(
      jnp.floor(u_own * n_own[:, None].astype(jnp.float32)).astype(jnp.int32),
      n_own[:, None] - 1)  # (B, R)
  own = jnp.take_along_axis(own_idx, own_pick, axis=1)  # (B, R)
  b = jnp.arange(dist.shape[0])[:, None]
  d = dist[b[:, :, None], items]  # (B, R, P)
  t = dist[b, own][:, :, None]
  before = (d < t) | ((d == t) & (items < own[:, :, None]))
  other = jnp.arange(num_p)[None, None, :] != query_group[:, None, None]
  return jnp.sum(before & other, axis=2, dtype=jnp.int32)


single_shot_jit = jax.jit(single_shot_kernel, static_argnames=("num_repeats",))


def single_shot_inputs(rows: np.ndarray, matches: Matches,
                       groups: SingleShotGroups, tile: int
                       ) -> dict[str, np.ndarray]:
  """Per-row inputs of ``single_shot_kernel`` for a padded tile of rows."""
  n = rows.size
  src = np.full(tile, rows[0] if n else 0)
  src[:n] = rows
  return dict(rows=src.astype(np.int32), query_group=groups.query_group[src],
              own_idx=groups.own_idx[src],
              num_matches=matches.num_matches[src].astype(np.int32))


def check_options(max_rank, query_tile, protocol, num_repeats, method="auto"):
  """Raises ValueError naming a bad ranking option."""
  if not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
    raise ValueError(f"max_rank must be a positive int, got {max_rank!r}.")
  if query_tile is not None and (
      not isinstance(query_tile, (int, np.integer)) or query_tile < 1):
    raise ValueError(f"query_tile must be a positive int, got {query_tile!r}.")
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
  if protocol == "cuhk03" and (
      not isinstance(num_repeats, (int, np.integer)) or num_repeats < 1):
    raise ValueError(
        f"num_repeats must be a positive int, got {num_repeats!r}.")
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
