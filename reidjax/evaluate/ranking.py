"""Ranking with pair models (DuATM, CACE-Net): tiled pairwise distances, re-ranking.

A pair model's distance of (q, g) is a function of both items, so it cannot
be a matrix product. Here it is a jitted ``pair_fn(query_items,
gallery_items) -> (tq, tg)`` on tiles of items, where items are pytrees of
arrays with a leading item axis (e.g. ``{"sequence": (N, S, D), "mask": (N,
S)}``, the output of the model's ``embed``).

* ``pairwise_distance_tiled``: the full (Q, G) matrix, tile by tile (for
  small sets, reports and tests).
* ``evaluate_pair_model``: CMC / mAP / mINP of the full pairwise ranking,
  streamed: per query tile (split over the mesh's ``data`` axis) the (rows,
  G) row block is built from (rows, gallery_tile) blocks with ``lax.map`` over
  the padded gallery tiles (one compiled shape), then ranked by the counting
  kernel of ``metrics.py`` on the device.
* ``evaluate_two_stage``: the usual cheap alternative (Wang et al., CVPR 2018,
  DuATM Sec. 4.4; CACE-Net): a first stage ranks the whole gallery by an
  embedding distance; the pair model re-orders only each query's top-K of
  that ranking (``lax.top_k``: first-stage order, ties by gallery index) by
  pair distance (ties by gallery index); items beyond K keep their
  first-stage order after them. Exact ranks of that final list come from:
  a match beyond K has the same valid items before it in both lists (all of
  the top-K, and the non-top-K items before it in first-stage order), so its
  final rank is its first-stage rank (the counting kernel on the embedding
  distances); a match inside the top K is ranked among the valid top-K items
  by pair distance, a (K x matches) count. With K >= G this is the full
  pairwise ranking.

Removed items (same pid, same camera) and skipped queries follow
``metrics.py``; the CUHK03 protocol is available for full pairwise ranking.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from reidjax.evaluate import distance, metrics, streaming
from reidjax.train import sharding

PairFn = Callable[[Any, Any], jax.Array]


def _num_items(items: Any, name: str) -> int:
  leaves = jax.tree.leaves(items)
  if not leaves:
    raise ValueError(f"{name} has no arrays.")
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes or 0 in sizes:
    raise ValueError(f"Every array of {name} needs the same non-zero leading "
                     f"(item) axis, got shapes "
                     f"{[np.shape(x) for x in leaves]}.")
  return sizes.pop()


def default_gallery_tile() -> int:
  return 256 if jax.default_backend() == "cpu" else 1024


def gallery_tiles(items: Any, tile: int) -> Any:
  """(G, ...) items -> (ceil(G / tile), tile, ...) host arrays.

  The last tile is padded with copies of item 0 (a real item: padding with
  zeros could make a pair function produce NaN); their distances are
  dropped.
  """
  num = _num_items(items, "gallery_items")
  n_tiles = -(-num // tile)
  src = np.zeros(n_tiles * tile, np.int64)
  src[:num] = np.arange(num)
  return jax.tree.map(
      lambda x: np.asarray(x)[src].reshape((n_tiles, tile) + np.shape(x)[1:]),
      items)


def pair_rows(pair_fn: PairFn, query_items: Any, tiles: Any,
              num_gallery: int) -> jax.Array:
  """(b, G) pair distances of b query items to all gallery tiles (traceable)."""
  blocks = lax.map(lambda g: pair_fn(query_items, g), tiles)  # (T, b, tg)
  n_tiles, b, tg = blocks.shape
  return blocks.transpose(1, 0, 2).reshape(b, n_tiles * tg)[:, :num_gallery]


def _bind(pair_fn: PairFn, shared: dict[str, Any]) -> PairFn:
  """pair_fn(a, b), or pair_fn(params, a, b) when ``shared`` has params."""
  if "params" in shared:
    return functools.partial(pair_fn, shared["params"])
  return pair_fn


def _shared(params: Any, **arrays) -> dict[str, Any]:
  return arrays if params is None else dict(arrays, params=params)


@functools.lru_cache(maxsize=64)
def pair_local_fn(pair_fn: PairFn, num_gallery: int) -> streaming.LocalFn:

  def local_fn(row_args, shared, kin, *, block):
    dist = lax.optimization_barrier(pair_rows(  # See streaming.py.
        _bind(pair_fn, shared), row_args, shared["tiles"], num_gallery))
    return dict(ranks=metrics.match_ranks_kernel(dist, **kin, block=block),
                nan=jnp.isnan(dist).any(axis=1), dist=dist)

  return local_fn


@functools.lru_cache(maxsize=64)
def _tiled_step(pair_fn: PairFn, num_gallery: int, mesh: Mesh) -> Callable:
  rows = P(sharding.DATA_AXIS)

  def local(query_items, shared):
    return pair_rows(_bind(pair_fn, shared), query_items, shared["tiles"],
                     num_gallery)

  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(rows, P()),
                               out_specs=rows, check_vma=False))


def pairwise_distance_tiled(pair_fn: PairFn, query_items: Any,
                            gallery_items: Any, *,
                            query_tile: int | None = None,
                            gallery_tile: int | None = None,
                            mesh: Mesh | None = None,
                            params: Any = None) -> np.ndarray:
  """The full (Q, G) pair-distance matrix, computed in padded tiles.

  Args:
    pair_fn: ``(query tile items, gallery tile items) -> (tq, tg)``, or
      ``(params, a, b) -> ...`` with ``params``.
    query_items: pytree of (Q, ...) arrays.
    gallery_items: pytree of (G, ...) arrays.
    query_tile: query rows per step (rounded up to a multiple of the devices).
    gallery_tile: gallery items per pair_fn call.
    mesh: mesh with a ``data`` axis; default all devices.
    params: optional first argument of pair_fn, replicated.

  Returns:
    (Q, G) host array.
  """
  num_q = _num_items(query_items, "query_items")
  num_g = _num_items(gallery_items, "gallery_items")
  mesh = sharding.make_data_mesh() if mesh is None else mesh
  devices = mesh.shape[sharding.DATA_AXIS]
  query_tile = query_tile or streaming.default_streaming_tile(devices)
  tile = -(-min(int(query_tile), num_q) // devices) * devices
  shared = streaming.replicate(_shared(params, tiles=gallery_tiles(
      gallery_items, gallery_tile or default_gallery_tile())), mesh)
  step = _tiled_step(pair_fn, num_g, mesh)
  out = []
  for lo in range(0, num_q, tile):
    src = np.minimum(np.arange(lo, lo + tile), num_q - 1)
    args = jax.tree.map(lambda x, s=src: streaming.put(
        np.asarray(x)[s], mesh, P(sharding.DATA_AXIS)), query_items)
    out.append((min(tile, num_q - lo), step(args, shared)))
  return np.concatenate([streaming.to_host(d)[:n] for n, d in out])


def evaluate_pair_model(pair_fn: PairFn, query_items: Any, gallery_items: Any,
                        query_pids, gallery_pids, query_camids, gallery_camids,
                        *, query_tile: int | None = None,
                        gallery_tile: int | None = None,
                        mesh: Mesh | None = None, max_rank: int = 50,
                        protocol: str = "market1501", num_repeats: int = 10,
                        seed: int = 0, camera_filter: bool = True,
                        params: Any = None) -> metrics.RankingMetrics:
  """Metrics of the full pairwise ranking, streamed (see module doc).

  Args:
    pair_fn: ``(query tile items, gallery tile items) -> (tq, tg)`` distances,
      smaller = more similar (or ``(params, a, b) -> ...`` with ``params``);
      traced inside a jitted step. Keep the same function object between
      calls to reuse the compiled step.
    query_items, gallery_items: pytrees of (Q, ...) / (G, ...) host arrays.
    query_pids, query_camids, gallery_pids, gallery_camids: labels.
    query_tile: global query rows per step; None: 256 per CPU device, 1024 per
      accelerator.
    gallery_tile: gallery items per pair_fn call (the last tile is padded).
    mesh: mesh with a ``data`` axis; default all devices.
    max_rank, protocol, num_repeats, seed, camera_filter: as
      ``metrics.evaluate_ranking``.
    params: optional pytree (e.g. model variables) passed as pair_fn's first
      argument; replicated on the mesh. New values reuse the compiled step.

  Returns:
    ``metrics.RankingMetrics``.
  """
  num_q = _num_items(query_items, "query_items")
  num_g = _num_items(gallery_items, "gallery_items")
  matches, labels = metrics.prepare_matches(
      num_q, num_g, query_pids, gallery_pids, query_camids, gallery_camids,
      camera_filter=camera_filter, what="the items give Q x G")
  metrics.check_options(max_rank, query_tile, protocol, num_repeats)
  tiles = gallery_tiles(gallery_items, gallery_tile or default_gallery_tile())
  return streaming.run_query_tiles(
      pair_local_fn(pair_fn, num_g), query_items, _shared(params, tiles=tiles),
      matches, labels,
      mesh=mesh, query_tile=query_tile, max_rank=max_rank, protocol=protocol,
      num_repeats=num_repeats, seed=seed, what="pair distances")


# ----------------------------------------------------------------------------
# Two-stage: embedding ranking, pair re-ranking of the top K.


def top_k_rerank_ranks(pair_dist_top, top_idx, first_ranks, match_idx,
                       removed_idx, removed_mask):
  """Final match ranks of the two-stage list (traceable; see module doc).

  Args:
    pair_dist_top: (b, K) pair distances of each query to its top-K items.
    top_idx: (b, K) int32 gallery indices of the first-stage top K.
    first_ranks: (b, M) first-stage ranks of the matches.
    match_idx: (b, M) int32 matches (padding entries give garbage).
    removed_idx: (b, R) int32; removed_mask: (b, R) bool.

  Returns:
    (b, M) int32 final ranks.
  """
  # (b, K) removed flags of the top-K items.
  removed = jnp.any((top_idx[:, :, None] == removed_idx[:, None, :])
                    & removed_mask[:, None, :], axis=2)
  hit = top_idx[:, None, :] == match_idx[:, :, None]  # (b, M, K)
  in_top = jnp.any(hit, axis=2)
  p_match = jnp.sum(jnp.where(hit, pair_dist_top[:, None, :], 0.0), axis=2)
  p = pair_dist_top[:, None, :]
  before = (~removed[:, None, :]) & (
      (p < p_match[:, :, None])
      | ((p == p_match[:, :, None])
         & (top_idx[:, None, :] < match_idx[:, :, None])))
  top_ranks = jnp.sum(before, axis=2, dtype=jnp.int32)
  return jnp.where(in_top, top_ranks, first_ranks)


@functools.lru_cache(maxsize=64)
def two_stage_local_fn(pair_fn: PairFn, metric: str, top_k: int,
                       pair_batch: int | None) -> streaming.LocalFn:

  def local_fn(row_args, shared, kin, *, block):
    d1 = lax.optimization_barrier(distance.prepared_distance(
        row_args["features"], shared["gallery"]["features"], metric=metric,
        g_sq=shared["gallery"].get("g_sq")))
    first = metrics.match_ranks_kernel(d1, **kin, block=block)
    _, top_idx = lax.top_k(-d1, top_k)  # Ties: lower index first.

    fn = _bind(pair_fn, shared)

    def one_query(args):
      q_item, idx = args
      g = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), shared["items"])
      q = jax.tree.map(lambda x: x[None], q_item)
      return fn(q, g)[0]

    pair_top = lax.map(one_query, (row_args["items"], top_idx),
                       batch_size=pair_batch)  # (b, K)
    ranks = top_k_rerank_ranks(pair_top, top_idx, first, kin["match_idx"],
                               kin["removed_idx"], kin["removed_mask"])
    nan = jnp.isnan(d1).any(axis=1) | jnp.isnan(pair_top).any(axis=1)
    return dict(ranks=ranks, nan=nan)

  return local_fn


def evaluate_two_stage(pair_fn: PairFn, query_items: Any, gallery_items: Any,
                       query_features, gallery_features, query_pids,
                       gallery_pids, query_camids, gallery_camids, *,
                       top_k: int = 100, metric: str = "euclidean",
                       normalize: bool = False, eps: float = 1e-12,
                       query_tile: int | None = None,
                       pair_batch: int | None = None,
                       mesh: Mesh | None = None, max_rank: int = 50,
                       camera_filter: bool = True,
                       params: Any = None) -> metrics.RankingMetrics:
  """Embedding ranking, then pair re-ranking of each query's top K (module doc).

  Args:
    pair_fn: ``(query items (1, ...), gallery items (K, ...)) -> (1, K)``
      distances (the same function as for ``evaluate_pair_model``).
    query_items, gallery_items: pytrees of (Q, ...) / (G, ...) host arrays.
    query_features, gallery_features: (Q, D) / (G, D) first-stage features.
    query_pids, query_camids, gallery_pids, gallery_camids: labels.
    top_k: items re-ranked per query (clipped to G).
    metric, normalize, eps: first-stage distance (``distance.py``).
    query_tile: global query rows per step.
    pair_batch: queries whose top-K pair distances are computed at once
      (``lax.map`` batch); None: one at a time.
    mesh: mesh with a ``data`` axis; default all devices.
    max_rank, camera_filter: as ``metrics.evaluate_ranking`` (Market-1501
      protocol).
    params: optional first argument of pair_fn (see ``evaluate_pair_model``).

  Returns:
    ``metrics.RankingMetrics`` of the final list.
  """
  distance.check_metric(metric)
  num_q = _num_items(query_items, "query_items")
  num_g = _num_items(gallery_items, "gallery_items")
  q, g = streaming.check_features(query_features, gallery_features)
  if (q.shape[0], g.shape[0]) != (num_q, num_g):
    raise ValueError(
        f"{num_q} query items but {q.shape[0]} query features, or {num_g} "
        f"gallery items but {g.shape[0]} gallery features.")
  if not isinstance(top_k, (int, np.integer)) or top_k < 1:
    raise ValueError(f"top_k must be a positive int, got {top_k!r}.")
  matches, labels = metrics.prepare_matches(
      num_q, num_g, query_pids, gallery_pids, query_camids, gallery_camids,
      camera_filter=camera_filter, what="the items give Q x G")
  metrics.check_options(max_rank, query_tile, "market1501", 1)
  mesh = sharding.make_data_mesh() if mesh is None else mesh
  g_prep, q_prep = streaming.prepare_pair(q, g, metric, normalize, eps, mesh)
  shared = _shared(params, gallery=g_prep, items=gallery_items)
  row_args = dict(features=q_prep, items=query_items)
  local_fn = two_stage_local_fn(pair_fn, metric, int(min(top_k, num_g)),
                                pair_batch)
  return streaming.run_query_tiles(
      local_fn, row_args, shared, matches, labels, mesh=mesh,
      query_tile=query_tile, max_rank=max_rank, what="two-stage distances")
