"""Ranking metrics for ReID: CMC, mAP and mINP; Market-1501 and CUHK03 protocols.

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

Implementation: no per-row sort. The only ranks needed are those of the
matches, and the 0-based rank of match j (gallery index k_j, distance t_j) is a
count:

  rank_j = #{valid i : d_i < t_j  or  (d_i == t_j and i < k_j)}

which reproduces the stable-argsort tie rule exactly. Two exact ways to count,
picked per row by a cost estimate (``method="auto"``):

* ``"count"`` (jitted, any backend): contiguous (query_tile, G) tiles go to a
  kernel that, per block of 8 rows (on CPU, so a block stays in cache), loops
  over match slots up to the block's largest match count, each slot one (8, G)
  compare-and-count row reduction (float32 sums of 0/1, exact below 2**24).
  Work ~ (matches) x G. Removed items are counted like any other item, then the
  ones before match j are subtracted (a K-wide check), which keeps +-inf exact.
  Tiles are zero-padded and the match lists padded to one power-of-two width,
  so a call compiles ONE kernel shape.
* ``"head"`` (host, CPU backend): only items at or below the row's last match
  distance T (its *head*, typically a few % of G for a trained model) can come
  before a match. They are found with one vectorised compare, removed items are
  dropped, and each is packed into a uint64 key ``float_key(d) << b | index``
  whose integer order is exactly (distance, index) order; rank_j is then
  the number of head keys below match j's key, counted by broadcasting over
  rows grouped by head size. Work ~ G + (matches) x (head size). Rows with a
  large head (random features, weak models) go to the counting kernel.

The O(Q x M) epilogue (sorting each query's match ranks, AP, INP, CMC) runs
on the host in float64, like the references. Comparisons are made in the
distances' dtype; float64 distances are ranked in float32 unless
``jax_enable_x64`` is set (values that round to the same float32 then count as
ties); -0.0 and +0.0 tie.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
from typing import Any
import warnings

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

PROTOCOLS = ("market1501", "cuhk03")
METHODS = ("auto", "count", "head")

# Power-of-two floors for the padded number of matches / removed items per
# query: fewer distinct compiled shapes for little extra work.
_MIN_MATCH_PAD = 8
_MIN_REMOVED_PAD = 4
# "head" cost model (ns, fitted on a shared 2-core AMD EPYC, Market-1501-sized
# structured and random distances; only speed depends on them, never
# results): per head item (extract, pack), per (head item, match) compare,
# and per (gallery item, match) in the kernel. A row goes to the kernel when
# its head is large: > 69% of G with 12 matches (random features: ~92%).
_HEAD_ITEM_NS, _HEAD_MATCH_NS, _COUNT_NS = 2.0, 1.0, 0.8
# The cap on one broadcast compare of the "head" path.
_MAX_COMPARE_BYTES = 1 << 25
_UINT64_MAX = np.uint64(np.iinfo(np.uint64).max)


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
# "count": the jitted counting kernel.


def match_ranks_kernel(dist, order, match_idx, num_matches, removed_idx,
                       removed_mask, *, block: int):
  """0-based ranks of each row's matches among its valid gallery items.

  A pure function (jit it, or call it inside ``shard_map`` on a row shard).

  Args:
    dist: (B, G) distances, no NaN.
    order: (B,) int32 permutation: rows are processed in this order (the
      caller sorts them by match count so that blocks are balanced).
    match_idx: (B, M) int32 gallery indices of the matches, left-aligned
      (padding: any in-range index).
    num_matches: (B,) int32 number of real entries of each row of match_idx.
    removed_idx: (B, K) int32 gallery indices of the removed items.
    removed_mask: (B, K) bool, False on padding.
    block: rows per inner block; B must be a multiple of it.

  Returns:
    (B, M) int32 in input row order; entry [r, j] for j < num_matches[r] is
    the rank of match j (ties broken by gallery index), the rest is garbage.
  """
  # One materialised copy for every consumer below (see streaming.py).
  dist = lax.optimization_barrier(dist)
  num_b, num_g = dist.shape
  num_m = match_idx.shape[1]
  rows = jnp.arange(num_b)[:, None]
  d_match = dist[rows, match_idx]  # (B, M)
  gallery_index = lax.broadcasted_iota(jnp.int32, (1, num_g), 1)
  # Counts are sums of 0/1; float32 sums of them are exact below 2**24 and
  # vectorise better than int32 on the CPU backend.
  acc_dtype = jnp.float32 if num_g < 2**24 else jnp.int32

  def block_counts(args):
    o, t, k, n = args  # (S,), (S, M), (S, M), (S,)
    # A contiguous copy of the block's rows, re-read once per match slot:
    # small enough (S x G) to stay in cache on CPU.
    d = jnp.take(dist, o, axis=0)

    def count_slot(j, counts):
      t_j = lax.dynamic_slice_in_dim(t, j, 1, axis=1)  # (S, 1)
      k_j = lax.dynamic_slice_in_dim(k, j, 1, axis=1)
      before = (d < t_j) | ((d == t_j) & (gallery_index < k_j))
      c = jnp.sum(before.astype(acc_dtype), axis=1, keepdims=True)
      return lax.dynamic_update_slice_in_dim(counts, c.astype(jnp.int32), j,
                                             axis=1)

    # One (S, G) row reduction per match slot, only up to the block's largest
    # match count (rows are sorted by count, so little is wasted). A single
    # fused (S, M, G) reduction was ~5x slower on CPU.
    return lax.fori_loop(0, jnp.max(n), count_slot,
                         jnp.zeros(t.shape, jnp.int32))

  num_blocks = num_b // block
  counts = lax.map(block_counts, (
      order.reshape(num_blocks, block),
      d_match[order].reshape(num_blocks, block, num_m),
      match_idx[order].reshape(num_blocks, block, num_m),
      num_matches[order].reshape(num_blocks, block))).reshape(num_b, num_m)
  counts = jnp.zeros_like(counts).at[order].set(counts)  # Input row order.

  # Removed items were counted like any other; subtract those before j.
  d_rem = dist[rows, removed_idx][:, None, :]  # (B, 1, K)
  t, k = d_match[:, :, None], match_idx[:, :, None]
  rem_before = removed_mask[:, None, :] & (
      (d_rem < t) | ((d_rem == t) & (removed_idx[:, None, :] < k)))
  return counts - jnp.sum(rem_before, axis=2, dtype=jnp.int32)


_match_ranks = jax.jit(match_ranks_kernel, static_argnames=("block",))


def kernel_block(tile: int) -> int:
  """Rows per kernel block for a (local) tile of ``tile`` rows."""
  # Blocks of 8 keep the working set in cache on CPU; elsewhere one block per
  # tile (a sequential loop over blocks would starve a GPU).
  if jax.default_backend() == "cpu":
    return math.gcd(int(tile), 8)
  return int(tile)


def kernel_inputs(rows: np.ndarray, matches: Matches, tile: int,
                  shards: int = 1) -> dict[str, np.ndarray]:
  """Host inputs of ``match_ranks_kernel`` for a tile of query rows.

  Args:
    rows: (n,) global query indices, n <= tile; the tile is padded with rows
      of no matches.
    matches: from ``prepare_matches``.
    tile: padded tile size, a multiple of ``shards``.
    shards: the tile is split into this many contiguous row shards (devices);
      ``order`` permutes rows within each shard.

  Returns:
    dict of (tile, ...) arrays: order, match_idx, num_matches, removed_idx,
    removed_mask.
  """
  n = rows.size
  src = np.full(tile, rows[0] if n else 0)
  src[:n] = rows
  counts = np.zeros(tile, np.int32)
  counts[:n] = matches.num_matches[rows]
  local = tile // shards
  # Per shard, rows by ascending match count: each block's loop over match
  # slots then runs about as long as its rows need.
  order = np.argsort(counts.reshape(shards, local), axis=1, kind="stable")
  removed_mask = np.zeros((tile, matches.removed_idx.shape[1]), bool)
  removed_mask[:n] = matches.removed_mask[rows]
  return dict(order=order.reshape(-1).astype(np.int32),
              match_idx=matches.match_idx[src], num_matches=counts,
              removed_idx=matches.removed_idx[src], removed_mask=removed_mask)


# ----------------------------------------------------------------------------
# "head": exact host counting over each row's head.


def float_keys(values: np.ndarray) -> np.ndarray:
  """uint32 keys whose integer order is the float32 order (-0.0 == +0.0).

  NaN must not occur. The standard trick: flip every bit of a negative
  number, only the sign bit of a non-negative one.
  """
  bits = (np.asarray(values, np.float32) + np.float32(0)).view(np.uint32)
  bits ^= (bits.view(np.int32) >> 31).view(np.uint32) | np.uint32(0x80000000)
  return bits


def _head_keys(bits: np.ndarray, signed: bool, index: np.ndarray,
               index_bits: int) -> np.ndarray:
  """uint64 ``float_key << index_bits | index``: (value, index) order.

  ``bits``: the float32 values' uint32 bit patterns. Without sign bits
  (``signed`` False: no negative value and no -0.0) the patterns are already
  in float order, the common case for distances.
  """
  if signed:
    bits = float_keys(bits.view(np.float32))
  keys = bits.astype(np.uint64)
  keys <<= np.uint64(index_bits)
  keys |= index.astype(np.uint64)
  return keys


def _pad_sizes(n: np.ndarray) -> np.ndarray:
  """Padded sizes, multiples of 8 within ~19% of n (>= 16): 16, 24, 32, 40,
  48, 56, 64, 80, 96, 112, 128, 160, ... (four steps per power of two)."""
  n = np.maximum(np.asarray(n, np.int64), 16)
  step = np.maximum(1 << (np.floor(np.log2(n - 1)).astype(np.int64) - 2), 8)
  return -(-n // step) * step


class _NanError(ValueError):
  """A NaN in a host tile (the caller names it)."""


def _head_counts(dist: np.ndarray, matches: Matches, rows: np.ndarray,
                 force: bool):
  """Ranks of the matches of ``rows`` by the head method (see module doc).

  Args:
    dist: (B, G) float32 host distances of the rows.
    matches: labels.
    rows: (B,) global query indices.
    force: head method for every row (else rows whose head is too large for
      the cost model are left to the kernel).

  Returns:
    ranks (B, M) int64 (valid for j < num_matches), and the positions of the
    rows NOT handled (for the kernel).

  Raises:
    _NanError: a row with a match has a NaN distance (rows without a match
      are not looked at).
  """
  num_b, num_g = dist.shape
  mi = matches.match_idx[rows]
  nm = matches.num_matches[rows]
  num_m = mi.shape[1]
  t = np.take_along_axis(dist, mi.astype(np.intp), axis=1)  # (B, M)
  is_match = np.arange(num_m)[None, :] < nm[:, None]
  thresh = np.where(is_match, t, -np.inf).max(axis=1)
  # The head: nothing after it can precede a match. "not >" keeps NaN in it,
  # where it is caught below without a separate pass over the rows.
  mask = np.greater(dist, thresh[:, None])
  np.logical_not(mask, out=mask)
  r_rows, r_slots = np.nonzero(matches.removed_mask[rows])
  mask[r_rows, matches.removed_idx[rows][r_rows, r_slots]] = False
  # A 1-D count_nonzero per row is ~5x faster than count_nonzero(axis=1).
  heads = np.array([np.count_nonzero(m) for m in mask], np.int64)
  light = nm > 0
  if not force:
    # Head cost vs kernel cost, per row (all rows already paid the compare).
    light &= (heads * (_HEAD_ITEM_NS + _HEAD_MATCH_NS * nm)
              <= nm * num_g * _COUNT_NS)
  if not light.all():
    mask[~light] = False
    heads[~light] = 0

  ranks = np.zeros((num_b, num_m), np.int64)
  heavy = np.flatnonzero((nm > 0) & ~light)
  if heavy.size and np.isnan(np.min(dist[heavy])):
    raise _NanError
  flat = np.flatnonzero(mask)
  if flat.size:
    index_bits = max(int(num_g - 1).bit_length(), 1)
    r = np.repeat(np.arange(num_b), heads)
    bits = dist.view(np.uint32).reshape(-1)[flat]
    if ((bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)).any():
      raise _NanError
    signed = bool((bits >> 31).any())  # Negatives or -0.0 in a head.
    keys = _head_keys(bits, signed, flat - r * num_g, index_bits)
    # The matches of light rows are in their heads: the same key mapping.
    mkeys = _head_keys(t.view(np.uint32), signed, mi, index_bits)
    start = np.cumsum(heads) - heads
    # Rows grouped by (padded head size, padded match count): a group is one
    # broadcast compare (rows, matches, padded head) with little padding.
    light_rows = np.flatnonzero(light)
    hpad = _pad_sizes(heads[light_rows])
    mpad = np.minimum(_pad_sizes(nm[light_rows]), num_m)
    order = np.lexsort((mpad, hpad))
    light_rows, hpad, mpad = light_rows[order], hpad[order], mpad[order]
    cuts = np.flatnonzero(np.diff(hpad) | np.diff(mpad)) + 1
    for group, hp, mg in zip(np.split(light_rows, cuts), hpad[np.r_[0, cuts]],
                             mpad[np.r_[0, cuts]]):
      step = max(1, _MAX_COMPARE_BYTES // int(mg * hp))
      slot = np.arange(hp)[None, :]
      for lo in range(0, group.size, step):
        g = group[lo:lo + step]
        head_keys = keys[np.minimum(start[g][:, None] + slot, flat.size - 1)]
        head_keys[slot >= heads[g][:, None]] = _UINT64_MAX
        before = np.greater(mkeys[g, :mg, None], head_keys[:, None, :])
        # hp is a multiple of 8: count 8 bools per popcount.
        ranks[g, :mg] = np.bitwise_count(before.view(np.uint64)).sum(
            axis=2, dtype=np.int64)
  return ranks, heavy


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


_single_shot = jax.jit(single_shot_kernel, static_argnames=("num_repeats",))


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


# ----------------------------------------------------------------------------
# evaluate_ranking.


def _device_tile(distmat, start, *, tile: int, dtype):
  # Traced start: one compile for every tile; rows past the end read 0.
  rows = start + jnp.arange(tile)
  return jnp.take(distmat, rows, axis=0, mode="fill", fill_value=0).astype(
      dtype)


_device_tile_jit = jax.jit(_device_tile, static_argnames=("tile", "dtype"))


def _pad_rows(x: np.ndarray, tile: int) -> np.ndarray:
  if x.shape[0] < tile:  # Pad the last tile: ONE compiled kernel shape.
    x = np.pad(x, ((0, tile - x.shape[0]), (0, 0)))
  return x


def _compute_dtype(dtype) -> np.dtype:
  if jnp.issubdtype(dtype, jnp.floating):
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))
  return np.dtype(np.float32)


def _check_no_nan(distmat, row_offset: int = 0) -> None:
  """Raises ValueError naming the first NaN (rows numbered from row_offset)."""
  if not jnp.issubdtype(distmat.dtype, jnp.floating):
    return
  if isinstance(distmat, jax.Array):
    has_nan = bool(jnp.isnan(distmat).any())
  else:
    has_nan = bool(np.isnan(np.min(distmat)))  # min propagates NaN; no temp.
  if has_nan:
    nan_at = np.argwhere(np.isnan(np.asarray(distmat)))
    raise ValueError(
        f"distmat contains {len(nan_at)} NaN distance(s), first at (query "
        f"{nan_at[0, 0] + row_offset}, gallery {nan_at[0, 1]}); NaN cannot be "
        "ranked. Check "
        "the features (e.g. a zero-norm embedding or a diverged model).")


def _host_threads() -> int:
  if hasattr(os, "sched_getaffinity"):
    cpus = len(os.sched_getaffinity(0))
  else:  # macOS
    cpus = os.cpu_count() or 1
  return max(1, min(cpus, 8))


def default_query_tile() -> int:
  # CPU: 32..256 measured within noise on Market-1501 sizes; 64 bounds the
  # rows sorted together and the host copy per call. Accelerators want bigger
  # launches (a (1024, 15913) float32 tile is 65 MB).
  return 64 if jax.default_backend() == "cpu" else 1024


_default_query_tile = default_query_tile  # Old name, used by benchmarks.


def check_options(max_rank, query_tile, protocol, num_repeats, method="auto"):
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


def evaluate_ranking(distmat, query_pids, gallery_pids, query_camids,
                     gallery_camids, *, max_rank: int = 50,
                     query_tile: int | None = None,
                     protocol: str = "market1501", num_repeats: int = 10,
                     seed: int = 0, camera_filter: bool = True,
                     method: str = "auto") -> RankingMetrics:
  """CMC, mAP and mINP of a query x gallery distance matrix (see module doc).

  Args:
    distmat: (Q, G) distances, smaller = more similar; a NumPy array or a
      jax.Array. NaN raises ValueError; +-inf is ranked like any value.
    query_pids, query_camids: (Q,) integer labels.
    gallery_pids, gallery_camids: (G,) integer labels (camids may be None with
      ``camera_filter=False``).
    max_rank: length of the CMC curve (may exceed G).
    query_tile: queries per kernel call; None picks 64 on CPU, 1024 elsewhere.
    protocol: ``"market1501"`` or ``"cuhk03"`` (single-gallery-shot CMC).
    num_repeats: CUHK03 sampling repeats.
    seed: CUHK03 sampling seed.
    camera_filter: remove same-pid same-camera gallery items (default); False
      for data without camera ids (warns: results are optimistic).
    method: ``"auto"`` (head method on the CPU backend where cheaper, else the
      kernel), ``"count"`` (the jitted kernel for every row) or ``"head"``
      (the head method for every row; float32 ranking only). Results are the
      same; only speed differs.

  Returns:
    ``RankingMetrics``.

  Raises:
    ValueError: bad shapes or arguments, NaN distances, or no query with a
      match in the gallery.
    TypeError: non-integer labels.
  """
  if not isinstance(distmat, jax.Array):
    distmat = np.asarray(distmat)
  if distmat.ndim != 2 or 0 in distmat.shape:
    raise ValueError("distmat must be a non-empty 2-D (num_query, num_gallery) "
                     f"array, got shape {tuple(distmat.shape)}.")
  num_q, num_g = distmat.shape
  matches, labels = prepare_matches(
      num_q, num_g, query_pids, gallery_pids, query_camids, gallery_camids,
      camera_filter=camera_filter)
  check_options(max_rank, query_tile, protocol, num_repeats, method)
  if query_tile is None:
    query_tile = default_query_tile()
  dtype = _compute_dtype(distmat.dtype)
  if method == "head" and dtype != np.float32:
    raise ValueError("method='head' ranks float32 only; use 'count' for "
                     f"{dtype} distances.")
  use_head = method == "head" or (
      method == "auto" and dtype == np.float32
      and jax.default_backend() == "cpu")
  if use_head and isinstance(distmat, jax.Array):
    distmat = np.asarray(distmat)  # Host memory already on the CPU backend.
  if not use_head:
    _check_no_nan(distmat)  # (The host tiles check their own rows.)

  block = kernel_block(query_tile)
  tile = min(int(query_tile), -(-num_q // block) * block)
  ranks = np.zeros(matches.match_idx.shape, np.int64)
  pending = []  # (rows, device ranks); all kernel calls dispatched first.

  def dispatch(rows, dist_rows):
    for lo in range(0, rows.size, tile):
      r = rows[lo:lo + tile]
      dist = dist_rows(lo, lo + r.size)
      inputs = kernel_inputs(r, matches, tile)
      pending.append((r, _match_ranks(dist, **inputs, block=block)))

  if use_head:
    # ~16M distances per host tile: few row groups, bounded memory.
    host_rows = int(np.clip(2**24 // num_g, 64, 1024))

    def host_tile(start):
      rows = np.arange(start, min(start + host_rows, num_q))
      dist = np.asarray(distmat[start:rows[-1] + 1], np.float32)
      try:
        head_ranks, rest = _head_counts(dist, matches, rows,
                                        force=method == "head")
      except _NanError:
        return rows, None, None, None
      # NaN in rows without a match: not ranked, but still an error.
      skipped = matches.num_matches[rows] == 0
      if skipped.any() and np.isnan(np.min(dist[skipped])):
        return rows, None, None, None
      return rows, head_ranks, rest, dist[rest]

    # NumPy releases the GIL in its loops: host tiles run on all cores.
    with concurrent.futures.ThreadPoolExecutor(_host_threads()) as pool:
      for rows, head_ranks, rest, rest_dist in pool.map(
          host_tile, range(0, num_q, host_rows)):
        if head_ranks is None:
          _check_no_nan(distmat[rows], rows[0])  # Raises.
        ranks[rows] = head_ranks
        if rest.size:
          dispatch(rows[rest], lambda lo, hi, d=rest_dist: _pad_rows(
              d[lo:hi], tile))
  else:
    for start in range(0, num_q, tile):
      rows = np.arange(start, min(start + tile, num_q))
      if not (matches.num_matches[rows] > 0).any():
        continue
      if isinstance(distmat, jax.Array):
        dist = _device_tile_jit(distmat, start, tile=tile, dtype=dtype)
      else:
        dist = _pad_rows(distmat[start:start + tile], tile).astype(
            dtype, copy=False)
      inputs = kernel_inputs(rows, matches, tile)
      pending.append((rows, _match_ranks(dist, **inputs, block=block)))
  for rows, r in pending:
    ranks[rows] = np.asarray(r)[:rows.size]

  valid = np.flatnonzero(matches.num_matches > 0)
  single_shot = None
  if protocol == "cuhk03" and valid.size:
    single_shot = _single_shot_ranks(distmat, valid, matches, labels,
                                     num_repeats, seed, tile, dtype)
  return finish_metrics(ranks[valid], matches.num_matches[valid], max_rank,
                        num_q, single_shot)


def _single_shot_ranks(distmat, rows: np.ndarray, matches: Matches,
                       labels: dict[str, np.ndarray], num_repeats: int,
                       seed: int, tile: int, dtype) -> np.ndarray:
  """(len(rows), R) CUHK03 single-shot ranks of the given queries."""
  groups = single_shot_groups(matches, labels)
  shared = dict(gallery_order=groups.gallery_order,
                group_start=groups.group_start, group_size=groups.group_size)
  out = []
  for lo in range(0, rows.size, tile):
    r = rows[lo:lo + tile]
    src = np.full(tile, r[0])
    src[:r.size] = r
    if isinstance(distmat, jax.Array):
      dist = jnp.take(distmat, src, axis=0).astype(dtype)
    else:
      dist = distmat[src].astype(dtype, copy=False)
    out.append((r.size, _single_shot(
        dist, seed=np.uint32(seed), **single_shot_inputs(r, matches, groups,
                                                         tile),
        **shared, num_repeats=num_repeats)))
  return np.concatenate([np.asarray(x)[:n] for n, x in out])


def evaluate_cuhk03(distmat, query_pids, gallery_pids, query_camids,
                    gallery_camids, *, num_repeats: int = 10, seed: int = 0,
                    **kwargs) -> RankingMetrics:
  """``evaluate_ranking(..., protocol="cuhk03")``."""
  return evaluate_ranking(distmat, query_pids, gallery_pids, query_camids,
                          gallery_camids, protocol="cuhk03",
                          num_repeats=num_repeats, seed=seed, **kwargs)

