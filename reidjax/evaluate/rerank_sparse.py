"""Sparse, streamed k-reciprocal re-ranking (Zhong et al., CVPR 2017).

The same re-ranking as ``rerank.k_reciprocal_rerank`` (Eq. 3, 6, 7, 10, 11,
12; the same parameters k1, k2, lambda and the same readings, see that
module) in memory linear in P = Q + G, from features:

1. Neighbour lists (streamed, never the (P, P) matrix): for each tile of
   items p, the (tile, P) distances T[p, :] = d(f_p, f_i) by one matrix
   product; the column normalisation of the dense path (each column of the
   original matrix divided by its maximum, then transposed) is, for a
   symmetric distance, a division of row p of T by its maximum c_p, taken in
   the same tile; then ``lax.top_k`` of the normalised row (ties: lower index
   first, as the dense path). Kept: c (P,) and N(p, k1) (P, k1 + 1).
2. R*(p, k1) (Eq. 3, 6) from the neighbour lists alone, per row tile.
3. V stored sparse with a fixed support per row: R*(p) has at most
   W = (k1 + 1)(1 + round(k1 / 2) + 1) candidates; they are sorted, merged
   and cut to the largest R* found (rounded up to a multiple of 8): indices
   ascending, empty slots index P and weight 0. The weights exp(-d(p, m))
   need d(p, m) only for those m: a gathered dot product (Eq. 7,
   L1-normalised).
4. Local query expansion (Eq. 11): the k2 neighbours' sparse rows summed by
   index (a sort and a segment sum), divided by k2; support k2 times the
   previous one, then cut to the largest found.
5. Jaccard distance (Eq. 10) only where supports meet: an inverted index
   (CSR by column) of the gallery rows of V; for a query tile, every (query,
   column) entry meets the gallery rows listed under its column, and
   m(q, g) = sum min(V_q,k, V_g,k) is accumulated with one ``np.bincount``.
   Elsewhere m = 0 and d_J = 1.
6. final = (1 - lambda) d_J + lambda d (Eq. 12), per query tile, ranked into
   the metrics at once (``evaluate_sparse_rerank``): no (Q, G) output unless
   asked (``SparseReranker.final_distances``).

Steps 1-4 and the distance tiles of step 6 are jitted (on the default
device); the inverted index, the bincount and the ranking's bookkeeping run
on the host. Protocol: Market-1501 (``metrics.evaluate_ranking`` per tile;
CUHK03's single-shot draws are keyed by the global query index: use the
dense path for it).

Agreement with the dense path: identical wherever the distances are exact
(e.g. integer features, many ties; the tests), otherwise up to float32
rounding (the dense path's matrix product and this path's tiles and gathered
dot products round differently; sums are taken in another order).

Memory (MSMT17: P = 93,820, D = 2048, k1 = 20, k2 = 6; W = 252): the
features (0.77 GB, on the host and the device), one (tile, P) distance tile
(256 rows: 96 MB), the candidates (P, W) int32 (94 MB), V as (P, S) int32 +
float32 (S <= W; tens for random features), the expanded V (P, <= k2 S) and
its CSR copy, and one query tile's bincount (tile x G float64, 168 MB). Time: one P x P x D matrix product (2 P^2 D FLOP, the
floor), plus Q x G x D for the final distances, plus the sparse work.

Which path ``eval.rerank`` takes (``choose_method``): ``"dense"`` when its
estimated peak ``rerank.memory_bytes(P)`` = 24 P^2 bytes is at most half the
memory available to the backend (``rerank.available_bytes``; unknown: P <=
20,000), ``"sparse"`` otherwise; ``eval.rerank_method`` forces either.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from reidjax.evaluate import distance, metrics, rerank, streaming

METHODS = ("auto", "dense", "sparse")
# "auto" without a memory figure: dense up to this many items (~9.6 GB).
_DENSE_ITEMS_UNKNOWN_MEMORY = 20_000


def choose_method(num_items: int, method: str = "auto") -> str:
  """``"dense"`` or ``"sparse"`` for P = num_items items (see module doc)."""
  if method not in METHODS:
    raise ValueError(f"rerank method must be one of {METHODS}, got "
                     f"{method!r}.")
  if method != "auto":
    return method
  free = rerank.available_bytes()
  if free is None:
    return "dense" if num_items <= _DENSE_ITEMS_UNKNOWN_MEMORY else "sparse"
  return "dense" if rerank.memory_bytes(num_items) <= free // 2 else "sparse"


def default_row_tile() -> int:
  """Items per neighbour-list tile: 256 on CPU, 2048 on accelerators."""
  return 256 if jax.default_backend() == "cpu" else 2048


# ----------------------------------------------------------------------------
# Device steps (jitted; one compiled shape per tile size).


def _pair_distance(x, x_sq, y, y_sq, metric: str):
  """(B, D) x (B, W, D) gathered -> (B, W), the formula of
  ``distance.prepared_distance``."""
  dot = jnp.einsum("bd,bwd->bw", x, y, precision=lax.Precision.HIGHEST)
  if metric == "euclidean":
    return jnp.maximum(x_sq[:, None] + y_sq - 2.0 * dot, 0.0)
  return 1.0 - dot


@functools.partial(jax.jit, static_argnames=("metric", "k"))
def _neighbour_tile(rows, rows_sq, feats, sq, *, metric: str, k: int):
  """Row maxima c (B,) and the k nearest items (B, k) of the normalised rows."""
  t = distance.prepared_distance(rows, feats, metric=metric, g_sq=sq,
                                 q_sq=rows_sq)
  c = jnp.max(t, axis=1)
  _, idx = lax.top_k(-(t / c[:, None]), k)
  return c, idx.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("half",))
def _members_tile(rows, fwd1, rec2, *, half: int):
  """R*(p, k1) (Eq. 3, 6) of the items ``rows`` (B,): (B, W) int32 member
  indices, ascending and unique, then P on the empty slots."""
  num = fwd1.shape[0]
  f1 = fwd1[rows]  # N(p, k1), (B, K1)
  rec1 = jnp.any(fwd1[f1] == rows[:, None, None], axis=2)
  cand = fwd1[:, :half + 1][f1]  # N(c, k1 / 2) of each c, (B, K1, h + 1)
  cand_valid = rec2[f1]
  in_r1 = jnp.any((cand[..., None] == f1[:, None, None, :])
                  & rec1[:, None, None, :], axis=3)
  overlap = jnp.sum(in_r1 & cand_valid, axis=2)
  size = jnp.sum(cand_valid, axis=2)
  accept = rec1 & (3 * overlap > 2 * size)
  members = jnp.concatenate([f1, cand.reshape(f1.shape[0], -1)], axis=1)
  valid = jnp.concatenate(
      [rec1, (cand_valid & accept[:, :, None]).reshape(f1.shape[0], -1)],
      axis=1)
  key = jnp.sort(jnp.where(valid, members, num), axis=1)
  first = jnp.concatenate([jnp.ones_like(key[:, :1], bool),
                           key[:, 1:] != key[:, :-1]], axis=1)
  # Duplicates -> P, sorted again: the members left-aligned, ascending.
  return jnp.sort(jnp.where(first, key, num), axis=1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("metric",))
def _weights_tile(rows, key, feats, sq, c, *, metric: str):
  """Eq. 7 on the members ``key`` (B, S) of ``rows``: (B, S) weights."""
  num = feats.shape[0]
  keep = key < num
  safe = jnp.minimum(key, num - 1)
  d = _pair_distance(feats[rows], sq[rows], feats[safe], sq[safe],
                     metric) / c[rows][:, None]
  w = jnp.where(keep, jnp.exp(-d), 0.0)
  return w / jnp.sum(w, axis=1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("k2",))
def _expand_tile(rows, fwd1, v_idx, v_val, *, k2: int):
  """Eq. 11 on sparse rows: mean of the k2 nearest items' V, by index."""
  num = fwd1.shape[0]
  b = rows.shape[0]
  nbr = fwd1[rows, :k2]  # (B, k2)
  idx = v_idx[nbr].reshape(b, -1)
  val = v_val[nbr].reshape(b, -1)
  order = jnp.argsort(idx, axis=1, stable=True)
  idx = jnp.take_along_axis(idx, order, axis=1)
  val = jnp.take_along_axis(val, order, axis=1)
  width = idx.shape[1]
  new = jnp.concatenate([jnp.ones((b, 1), bool), idx[:, 1:] != idx[:, :-1]],
                        axis=1)
  group = jnp.cumsum(new, axis=1) - 1  # Slot of each entry's index.
  seg = (jnp.arange(b)[:, None] * width + group).reshape(-1)
  summed = jax.ops.segment_sum(val.reshape(-1), seg, num_segments=b * width)
  out_idx = jnp.full((b, width), num, jnp.int32).at[
      jnp.arange(b)[:, None], group].set(idx)
  out_val = summed.reshape(b, width) / k2
  out_val = jnp.where(out_idx < num, out_val, 0.0)
  return out_idx, out_val, jnp.max(jnp.sum(out_idx < num, axis=1))


@functools.partial(jax.jit, static_argnames=("metric",))
def _original_tile(rows, rows_sq, gallery, g_sq, c, *, metric: str):
  """(B, G) normalised distances d of query rows to the gallery."""
  return distance.prepared_distance(rows, gallery, metric=metric, g_sq=g_sq,
                                    q_sq=rows_sq) / c[:, None]


# ----------------------------------------------------------------------------
# Host.


class _Clock:
  """Records the seconds since the last call under a name (if enabled)."""

  def __init__(self, out: dict[str, float] | None):
    self.out, self.last = out, time.perf_counter()

  def __call__(self, name: str) -> None:
    now = time.perf_counter()
    if self.out is not None:
      self.out[name] = self.out.get(name, 0.0) + now - self.last
    self.last = now


def _tiles(num: int, tile: int):
  """(start, padded (tile,) int32 indices, real count) of each tile."""
  for lo in range(0, num, tile):
    n = min(tile, num - lo)
    idx = np.minimum(np.arange(lo, lo + tile), num - 1).astype(np.int32)
    yield lo, idx, n


@dataclasses.dataclass
class SparseReranker:
  """The sparse state of a re-ranking; ``final_distances(rows)`` per tile.

  Attributes:
    num_query, num_gallery: Q and G.
    lambda_value: Eq. 12's lambda.
    metric: the distance of the features.
    query_feats, gallery_feats: (Q, D), (G, D) prepared features (device).
    query_sq, gallery_sq: (Q,), (G,) their squared norms.
    row_max: (P,) c, the normalisers of the rows.
    v_idx, v_val: (P, S) the expanded V, sparse (index P: empty slot).
    col_ptr, col_rows, col_vals: CSR by column of V's gallery rows (gallery
      row numbers 0..G-1).
  """

  num_query: int
  num_gallery: int
  lambda_value: float
  metric: str
  query_feats: jax.Array
  gallery_feats: jax.Array
  query_sq: jax.Array
  gallery_sq: jax.Array
  row_max: jax.Array
  v_idx: np.ndarray
  v_val: np.ndarray
  col_ptr: np.ndarray
  col_rows: np.ndarray
  col_vals: np.ndarray

  @property
  def support(self) -> int:
    return int(self.v_idx.shape[1])

  def jaccard_overlap(self, rows: np.ndarray) -> np.ndarray:
    """(len(rows), G) float64 m = sum_k min(V_q,k, V_g,k) of query rows."""
    num_b, num_g = rows.size, self.num_gallery
    idx, val = self.v_idx[rows], self.v_val[rows]
    b, s = np.nonzero((idx < self.col_ptr.size - 1) & (val > 0))
    k, v = idx[b, s], val[b, s]
    start = self.col_ptr[k]
    lens = self.col_ptr[k + 1] - start
    total = int(lens.sum())
    out = np.zeros(num_b * num_g, np.float64)
    if total:
      owner = np.repeat(np.arange(lens.size), lens)
      offset = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
      pos = start[owner] + offset
      out = np.bincount(
          b[owner] * num_g + self.col_rows[pos],
          weights=np.minimum(v[owner], self.col_vals[pos]),
          minlength=num_b * num_g)
    return out.reshape(num_b, num_g)

  def final_distances(self, rows: np.ndarray,
                      pad_to: int | None = None) -> np.ndarray:
    """(len(rows), G) float32 re-ranked distances of query rows (Eq. 12).

    ``pad_to``: compute the distance tile for this many rows (repeating the
    last one), so that every tile of a loop has one compiled shape.
    """
    rows = np.asarray(rows, np.int32)
    padded = rows
    if pad_to is not None and rows.size < pad_to:
      padded = np.concatenate([rows, np.full(pad_to - rows.size, rows[-1],
                                             np.int32)])
    d = np.asarray(_original_tile(
        self.query_feats[padded], self.query_sq[padded], self.gallery_feats,
        self.gallery_sq,
        self.row_max[padded], metric=self.metric))[:rows.size]
    m = self.jaccard_overlap(rows).astype(np.float32)
    jaccard = np.float32(1.0) - m / (np.float32(2.0) - m)
    lam = np.float32(self.lambda_value)
    return (np.float32(1.0) - lam) * jaccard + lam * d


def sparse_rerank_state(query_features, gallery_features, *,
                        metric: str = "euclidean", normalize: bool = False,
                        k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                        row_tile: int | None = None,
                        timings: dict[str, float] | None = None
                        ) -> SparseReranker:
  """Builds the sparse re-ranking state (steps 1-5 of the module doc).

  Args:
    query_features: (Q, D); gallery_features: (G, D).
    metric, normalize: as ``distance.pairwise_distance``.
    k1, k2, lambda_value: the paper's parameters (as the dense path).
    row_tile: items per neighbour-list tile; None: ``default_row_tile``.
    timings: if given, filled with the seconds of each step.
  """
  clock = _Clock(timings)
  distance.check_metric(metric)
  q, g = streaming.check_features(query_features, gallery_features)
  num_q, num_g = q.shape[0], g.shape[0]
  num = num_q + num_g
  rerank.check_parameters(k1, k2, lambda_value, num)
  tile = int(row_tile or default_row_tile())
  tile = min(tile, num)
  feats = distance.prepare_features(jnp.asarray(np.concatenate([q, g])),
                                    metric=metric, normalize=bool(normalize))
  sq = distance.compute_squared_norms(feats)

  # 1. Neighbour lists and row maxima.
  row_max = np.empty(num, np.float32)
  fwd1 = np.empty((num, k1 + 1), np.int32)
  for lo, idx, n in _tiles(num, tile):
    c, nbr = _neighbour_tile(feats[idx], sq[idx], feats, sq, metric=metric,
                             k=k1 + 1)
    row_max[lo:lo + n] = np.asarray(c)[:n]
    fwd1[lo:lo + n] = np.asarray(nbr)[:n]
  clock("neighbours")
  half = int(np.around(k1 / 2.0))
  f2 = fwd1[:, :half + 1]
  rec2 = np.any(f2[f2] == np.arange(num)[:, None, None], axis=2)
  fwd1_d, rec2_d, c_d = jnp.asarray(fwd1), jnp.asarray(rec2), jnp.asarray(
      row_max)

  # 2-3. Sparse V: the members, cut to the largest R* (rounded up to a
  # multiple of 8: few compiled shapes), then their weights.
  width = (k1 + 1) * (half + 2)
  v_idx = np.empty((num, width), np.int32)
  for lo, idx, n in _tiles(num, tile):
    v_idx[lo:lo + n] = np.asarray(_members_tile(
        jnp.asarray(idx), fwd1_d, rec2_d, half=half))[:n]
  support = int((v_idx < num).sum(axis=1).max())
  support = min(width, -(-support // 8) * 8)
  v_idx = np.ascontiguousarray(v_idx[:, :support])
  v_val = np.empty((num, support), np.float32)
  for lo, idx, n in _tiles(num, tile):
    v_val[lo:lo + n] = np.asarray(_weights_tile(
        jnp.asarray(idx), jnp.asarray(v_idx[idx]), feats, sq, c_d,
        metric=metric))[:n]
  clock("weights")

  # 4. Query expansion.
  if k2 != 1:
    parts, support = [], 1
    vi_d, vv_d = jnp.asarray(v_idx), jnp.asarray(v_val)
    for lo, idx, n in _tiles(num, tile):
      i, v, s = _expand_tile(jnp.asarray(idx), fwd1_d, vi_d, vv_d, k2=k2)
      s = int(s)
      support = max(support, s)
      parts.append((np.asarray(i)[:n, :s], np.asarray(v)[:n, :s]))
    del vi_d, vv_d
    v_idx = np.full((num, support), num, np.int32)
    v_val = np.zeros((num, support), np.float32)
    lo = 0
    for i, v in parts:
      v_idx[lo:lo + i.shape[0], :i.shape[1]] = i
      v_val[lo:lo + i.shape[0], :i.shape[1]] = v
      lo += i.shape[0]
    del parts
    clock("query_expansion")

  # 5. CSR by column of the gallery rows.
  gi, gv = v_idx[num_q:], v_val[num_q:]
  keep = (gi < num) & (gv > 0)
  g_rows, slots = np.nonzero(keep)
  cols = gi[g_rows, slots]
  order = np.argsort(cols, kind="stable")
  col_ptr = np.searchsorted(cols[order], np.arange(num + 1)).astype(np.int64)
  clock("inverted_index")
  return SparseReranker(
      num_query=num_q, num_gallery=num_g, lambda_value=float(lambda_value),
      metric=metric, query_feats=feats[:num_q], gallery_feats=feats[num_q:],
      query_sq=sq[:num_q], gallery_sq=sq[num_q:], row_max=c_d, v_idx=v_idx,
      v_val=v_val, col_ptr=col_ptr,
      col_rows=g_rows[order].astype(np.int64),
      col_vals=gv[g_rows, slots][order])


def k_reciprocal_rerank_sparse(query_features, gallery_features, *,
                               query_tile: int = 256, **kwargs) -> np.ndarray:
  """The full (Q, G) re-ranked matrix by the sparse path (when asked for)."""
  state = sparse_rerank_state(query_features, gallery_features, **kwargs)
  out = np.empty((state.num_query, state.num_gallery), np.float32)
  for lo in range(0, state.num_query, query_tile):
    rows = np.arange(lo, min(lo + query_tile, state.num_query))
    out[rows] = state.final_distances(rows, pad_to=query_tile)
  return out


def evaluate_sparse_rerank(query_features, gallery_features, query_pids,
                           gallery_pids, query_camids, gallery_camids, *,
                           metric: str = "euclidean", normalize: bool = False,
                           k1: int = 20, k2: int = 6,
                           lambda_value: float = 0.3, max_rank: int = 50,
                           camera_filter: bool = True,
                           query_tile: int | None = None,
                           row_tile: int | None = None,
                           timings: dict[str, float] | None = None
                           ) -> metrics.RankingMetrics:
  """Market-1501-protocol metrics of the sparse re-ranking, streamed.

  Each tile of the queries that have a match is re-ranked
  (``SparseReranker.final_distances``) and scored by
  ``metrics.evaluate_ranking``; the tiles' metrics are combined, weighted by
  their valid queries (CMC, mAP and mINP are means over valid queries).
  ``timings``: filled with the seconds of each step (``sparse_rerank_state``'s
  and ``final_ranking``).
  """
  q = np.asarray(query_features)
  g = np.asarray(gallery_features)
  matches, labels = metrics.prepare_matches(
      q.shape[0], g.shape[0], query_pids, gallery_pids, query_camids,
      gallery_camids, camera_filter=camera_filter,
      what="the features give Q x G")
  metrics.check_options(max_rank, query_tile, "market1501", 1)
  valid = np.flatnonzero(matches.num_matches > 0)
  if valid.size == 0:
    raise ValueError(f"No query has a match in the gallery (all "
                     f"{matches.num_matches.size} queries skipped): check the "
                     "pids and camids.")
  state = sparse_rerank_state(q, g, metric=metric, normalize=normalize,
                              k1=k1, k2=k2, lambda_value=lambda_value,
                              row_tile=row_tile, timings=timings)
  clock = _Clock(timings)
  tile = int(query_tile or 256)
  cmc = np.zeros(max_rank)
  ap = inp = 0.0
  for lo in range(0, valid.size, tile):
    rows = valid[lo:lo + tile]
    with warnings.catch_warnings():  # camera_filter=False: warned above.
      warnings.simplefilter("ignore")
      part = metrics.evaluate_ranking(
          state.final_distances(rows, pad_to=tile), labels["q_pids"][rows],
          labels["g_pids"], labels["q_camids"][rows], labels["g_camids"],
          max_rank=max_rank, camera_filter=camera_filter)
    n = part.num_valid_queries
    cmc += n * part.cmc
    ap += n * part.mAP
    inp += n * part.mINP
  clock("final_ranking")
  return metrics.RankingMetrics(
      cmc=cmc / valid.size, mAP=ap / valid.size, mINP=inp / valid.size,
      num_valid_queries=int(valid.size),
      num_skipped_queries=int(matches.num_matches.size - valid.size))
