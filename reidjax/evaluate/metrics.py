"""Ranking metrics of a distance matrix: ``evaluate_ranking`` (CMC, mAP, mINP).

The evaluation wing, one concern per file:

* ``protocols.py``: the protocol definitions (Market-1501, CUHK03
  single-gallery-shot; who matches whom, ``prepare_matches``; AP, INP, CMC
  from match ranks, ``finish_metrics``; ``RankingMetrics``);
* ``counting.py``: the two exact engines that find each match's rank (the
  jitted counting kernel, the host "head" method);
* ``cost_model.py``: which rows the head method takes;
* ``host_pool.py``: the host thread pool;
* this module: ``evaluate_ranking`` / ``evaluate_cuhk03`` on a (Q, G)
  matrix (host or device), picking the engine per row (``method="auto"``).

Comparisons are made in the distances' dtype; float64 distances are ranked in
float32 unless ``jax_enable_x64`` is set (values that round to the same
float32 then count as ties); -0.0 and +0.0 tie. The names of ``protocols``
and ``counting`` that callers used from here are re-exported.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from reidjax.evaluate import cost_model, counting, host_pool
from reidjax.evaluate.counting import (  # noqa: F401  (re-exported)
    float_keys,
    kernel_block,
    kernel_inputs,
    match_ranks,
    match_ranks_kernel,
)
from reidjax.evaluate.protocols import (  # noqa: F401  (re-exported)
    METHODS,
    PROTOCOLS,
    Matches,
    RankingMetrics,
    SingleShotGroups,
    check_options,
    cmc_from_first_ranks,
    finish_metrics,
    prepare_matches,
    single_shot_groups,
    single_shot_inputs,
    single_shot_jit,
    single_shot_kernel,
    single_shot_uniforms,
    summarize_ranks,
)

__all__ = [
    "METHODS", "PROTOCOLS", "Matches", "RankingMetrics", "SingleShotGroups",
    "check_options", "cmc_from_first_ranks", "default_query_tile",
    "evaluate_cuhk03", "evaluate_ranking", "finish_metrics", "float_keys",
    "kernel_block", "kernel_inputs", "match_ranks", "match_ranks_kernel",
    "prepare_matches", "single_shot_groups", "single_shot_inputs",
    "single_shot_jit", "single_shot_kernel", "single_shot_uniforms",
    "summarize_ranks",
]


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


def default_query_tile(all_rows: bool = False) -> int:
  """Queries per kernel call. ``all_rows``: every row goes to the kernel."""
  # CPU: the heavy rows the host pass leaves over come in small groups: 64
  # bounds their padding (Market-1501 sizes: 0.081 s with 64, 0.098 s with
  # 256). When every row goes to the kernel (e.g. a weak model), 256 sorts
  # more rows together into balanced blocks (uniform random distances: 0.203
  # s vs 0.231 s). Accelerators want bigger launches (a (1024, 15913) float32
  # tile is 65 MB).
  if jax.default_backend() != "cpu":
    return 1024
  return 256 if all_rows else 64


def _sample_prefers_kernel(distmat: np.ndarray, matches: Matches,
                           num_rows: int = 64) -> bool:
  """True when ``cost_model.HEAVY_FRACTION`` of ``num_rows`` evenly spread
  rows (with a match) are clearly too heavy for the head method."""
  rows = np.flatnonzero(matches.num_matches > 0)
  if rows.size == 0:
    return False
  rows = rows[np.linspace(0, rows.size - 1, min(num_rows, rows.size)).astype(
      int)]
  dist = np.asarray(distmat[rows], np.float32)
  if np.isnan(dist.min()):
    return False  # The host tiles name the NaN.
  nm = matches.num_matches[rows]
  t = np.take_along_axis(dist, matches.match_idx[rows].astype(np.intp), 1)
  thresh = np.where(np.arange(t.shape[1])[None, :] < nm[:, None], t,
                    -np.inf).max(axis=1)
  return bool(cost_model.clearly_heavy(dist, thresh, nm).mean()
              >= cost_model.HEAVY_FRACTION)


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
    query_tile: queries per kernel call; None: ``default_query_tile``.
    protocol: ``"market1501"`` or ``"cuhk03"`` (single-gallery-shot CMC).
    num_repeats: CUHK03 sampling repeats.
    seed: CUHK03 sampling seed.
    camera_filter: remove same-pid same-camera gallery items (default); False
      for data without camera ids (warns: results are optimistic).
    method: ``"auto"`` (head method on the CPU backend where cheaper, else the
      kernel; when 90% of a sample of 64 rows are clearly too heavy for the
      head method, every row goes to the kernel), ``"count"`` (the jitted kernel for every row) or ``"head"``
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
  dtype = _compute_dtype(distmat.dtype)
  if method == "head" and dtype != np.float32:
    raise ValueError("method='head' ranks float32 only; use 'count' for "
                     f"{dtype} distances.")
  use_head = method == "head" or (
      method == "auto" and dtype == np.float32
      and jax.default_backend() == "cpu")
  if use_head and isinstance(distmat, jax.Array):
    distmat = np.asarray(distmat)  # Host memory already on the CPU backend.
  if use_head and method == "auto" and _sample_prefers_kernel(distmat,
                                                              matches):
    use_head = False  # Every row to the kernel: no host pass at all.
  if not use_head:
    _check_no_nan(distmat)  # (The host tiles check their own rows.)
  if query_tile is None:
    query_tile = default_query_tile(all_rows=not use_head)

  block = kernel_block(query_tile, num_g)
  tile = min(int(query_tile), -(-num_q // block) * block)
  ranks = np.zeros(matches.match_idx.shape, np.int64)
  pending = []  # (rows, device ranks); all kernel calls dispatched first.

  def dispatch(rows, dist_rows):
    for lo in range(0, rows.size, tile):
      r = rows[lo:lo + tile]
      dist = dist_rows(lo, lo + r.size)
      inputs = kernel_inputs(r, matches, tile)
      pending.append((r, counting.match_ranks(dist, **inputs, block=block)))

  if use_head:
    # ~16M distances per host tile: few row groups, bounded memory.
    host_rows = int(np.clip(2**24 // num_g, 64, 1024))

    def host_tile(start):
      rows = np.arange(start, min(start + host_rows, num_q))
      dist = np.asarray(distmat[start:rows[-1] + 1], np.float32)
      try:
        head_ranks, rest = counting.head_counts(dist, matches, rows,
                                               force=method == "head")
      except counting.NanError:
        return rows, None, None, None
      # NaN in rows without a match: not ranked, but still an error.
      skipped = matches.num_matches[rows] == 0
      if skipped.any() and np.isnan(np.min(dist[skipped])):
        return rows, None, None, None
      # All rows left to the kernel (random distances): no copy.
      return rows, head_ranks, rest, (dist if rest.size == rows.size
                                      else dist[rest])

    # NumPy releases the GIL in its loops: host tiles run on all cores.
    for rows, head_ranks, rest, rest_dist in host_pool.host_map(
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
      pending.append((rows, counting.match_ranks(dist, **inputs, block=block)))
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
    out.append((r.size, single_shot_jit(
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

