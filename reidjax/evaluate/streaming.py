"""Streaming evaluation: rank without ever holding the Q x G distance matrix.

Queries are processed in tiles of ``query_tile`` rows. Each tile is split over
the ``data`` axis of a mesh (``reidjax.sharding.make_data_mesh``); on
every device one jitted ``shard_map`` program computes the (rows, G) distances
of its rows (``distance_step``) and a second one, from them, the 0-based
ranks of each row's matches with the counting kernel of ``counting.py`` (and,
for the CUHK03 protocol, the single-shot ranks). Only those small (rows, M)
rank arrays come back to the host; the host then computes CMC / mAP / mINP
exactly like ``metrics.evaluate_ranking`` on the full matrix. Peak memory is
the gallery (replicated on every device; on CPU an aligned host array is used
in place, ``sharding.host_empty``) plus one (query_tile / devices, G)
distance tile per device. Only queries with a match are computed at all.

A match's distance is read from the same materialised distance tile as its
competitors, so the ranks are exactly those of ``evaluate_ranking`` on the
matrix made of the tiles. A matrix computed separately (e.g. by
``distance.pairwise_distance`` on all queries at once) can differ from it by
rounding: the matmul's accumulation order depends on the number of rows
(XLA:CPU packs rows in panels). The metrics then agree exactly unless two
items' distances are within rounding of each other (with integer-valued
features, whose distances are exact, they always agree).

``run_query_tiles`` is the engine; ``evaluate_features`` is the embedding
model front end, ``ranking.py`` has the pair-model ones.

Speed on CPU (``benchmarks/eval_streaming.py``, MSMT17 test size, 2 cores):
the distance program runs at the machine's matmul rate; the counting kernel
adds ~16% (it is a sequential loop, on one core under XLA:CPU), and the
per-tile NaN scan is skipped when no distance can be NaN (``cannot_be_nan``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from reidjax.evaluate import counting, distance, protocols
from reidjax import sharding

# local_fn(row_args, shared, kernel_inputs, *, block) -> dict with "ranks"
# (b, M) int32, "dist" (b, G) when the protocol needs it, and "nan" (b,) bool
# unless its distances are known to be free of NaN.
LocalFn = Callable[..., dict[str, jax.Array]]


def default_streaming_tile(num_devices: int) -> int:
  """Global query rows per step: 256 on CPU (feeds the matmul), 1024 per
  accelerator."""
  per_device = 256 if jax.default_backend() == "cpu" else 1024
  return per_device * num_devices


def put(x, mesh: Mesh, spec: P):
  """Host array (global, on every process) -> jax.Array with ``spec``."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec),
                                      lambda idx: x[idx])


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Puts every leaf of ``tree`` on every device of ``mesh``."""
  def one(x):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(
        NamedSharding(mesh, P()), x.ndim):
      return x
    return put(np.asarray(x), mesh, P())
  return jax.tree.map(one, tree)


def to_host(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


@functools.lru_cache(maxsize=64)
def _build_step(local_fn: LocalFn, mesh: Mesh, block: int,
                num_repeats: int) -> Callable:
  """The jitted, shard-mapped step for one local function."""

  def local(row_args, shared, kin, single_shot):
    out = local_fn(row_args, shared, kin, block=block)
    dist = out.pop("dist", None)
    if num_repeats:
      out["single_shot"] = protocols.single_shot_kernel(
          dist, **single_shot, num_repeats=num_repeats)
    return out

  rows = P(sharding.DATA_AXIS)

  def step(row_args, shared, kin, single_shot_rows, single_shot_shared):
    single_shot = {**single_shot_rows, **single_shot_shared}
    specs_ss = ({k: rows for k in single_shot_rows}
                | {k: P() for k in single_shot_shared})
    return jax.shard_map(
        lambda a, s, k, ss: local(a, s, k, ss), mesh=mesh,
        in_specs=(rows, P(), rows, specs_ss), out_specs=rows,
        check_vma=False)(row_args, shared, kin, single_shot)

  return jax.jit(step)


def run_query_tiles(local_fn: LocalFn, row_args: Any, shared: Any,
                    matches: protocols.Matches, labels: dict[str, np.ndarray],
                    *, mesh: Mesh | None = None,
                    query_tile: int | None = None, max_rank: int = 50,
                    protocol: str = "market1501", num_repeats: int = 10,
                    seed: int = 0, what: str = "distances"
                    ) -> protocols.RankingMetrics:
  """Runs ``local_fn`` over tiles of the queries that have a match.

  Args:
    local_fn: a hashable pure function ``(row_args, shared, kernel_inputs, *,
      block) -> {"ranks": (b, M) int32[, "nan": (b,) bool][, "dist": (b,
      G)]}``
      of one device's rows (see ``evaluate_features`` for an example).
    row_args: pytree of host arrays with a leading query axis (Q, ...), or
      a function ``src -> pytree of jax.Arrays`` split over the mesh's
      ``data`` axis, where ``src`` is the (tile,) int array of the global
      query indices of a tile's rows (padding rows repeat a real query): the
      caller then builds each tile's rows itself (``ranking.py`` computes
      pair distances there, streaming gallery tiles from host memory).
    shared: pytree of arrays every device sees whole (gallery side).
    matches, labels: from ``protocols.prepare_matches``.
    mesh: mesh with a ``data`` axis; default: all devices.
    query_tile: global rows per step (rounded up to a multiple of
      devices x kernel block); None: ``default_streaming_tile``.
    max_rank, protocol, num_repeats, seed: as ``metrics.evaluate_ranking``.
    what: what local_fn computes, for the NaN error message.

  Returns:
    ``protocols.RankingMetrics``.
  """
  mesh = sharding.make_data_mesh() if mesh is None else mesh
  devices = mesh.shape[sharding.DATA_AXIS]
  if query_tile is None:
    query_tile = default_streaming_tile(devices)
  local = -(-int(query_tile) // devices)
  block = counting.kernel_block(local, matches.num_gallery)
  local = -(-local // block) * block
  valid = np.flatnonzero(matches.num_matches > 0)
  if valid.size == 0:
    raise ValueError(f"No query has a match in the gallery (all "
                     f"{matches.num_matches.size} queries skipped): check the "
                     "pids and camids.")
  # No more rows per step than there are valid queries (fewer padded rows).
  needed = -(-valid.size // devices)
  local = min(local, -(-needed // block) * block)
  tile = local * devices
  cuhk03 = protocol == "cuhk03"
  if cuhk03:
    groups = protocols.single_shot_groups(matches, labels)
    ss_shared = replicate(dict(
        gallery_order=groups.gallery_order, group_start=groups.group_start,
        group_size=groups.group_size, seed=np.uint32(seed)), mesh)
  else:
    ss_shared = {}
  step = _build_step(local_fn, mesh, block, num_repeats if cuhk03 else 0)
  shared = replicate(shared, mesh)
  row_spec = P(sharding.DATA_AXIS)

  pending = []
  for lo in range(0, valid.size, tile):
    rows = valid[lo:lo + tile]
    src = np.full(tile, rows[0])
    src[:rows.size] = rows
    if callable(row_args):
      args = row_args(src)
    else:
      args = jax.tree.map(lambda x, s=src: put(np.asarray(x)[s], mesh,
                                                row_spec), row_args)
    kin = counting.kernel_inputs(rows, matches, tile, shards=devices)
    kin = {k: put(v, mesh, row_spec) for k, v in kin.items()}
    ss_rows = {}
    if cuhk03:
      ss_rows = {k: put(v, mesh, row_spec) for k, v in
                 protocols.single_shot_inputs(rows, matches, groups,
                                            tile).items()}
    pending.append((rows, step(args, shared, kin, ss_rows, ss_shared)))

  ranks = np.zeros((valid.size, matches.match_idx.shape[1]), np.int64)
  single_shot = (np.zeros((valid.size, num_repeats), np.int64) if cuhk03
                 else None)
  for i, (rows, out) in enumerate(pending):
    n = rows.size
    nan = to_host(out["nan"])[:n] if "nan" in out else np.zeros(n, bool)
    if nan.any():
      raise ValueError(
          f"The {what} of query {rows[np.argmax(nan)]} contain NaN; NaN "
          "cannot be ranked. Check the features / the model.")
    at = slice(i * tile, i * tile + n)
    ranks[at] = to_host(out["ranks"])[:n]
    if cuhk03:
      single_shot[at] = to_host(out["single_shot"])[:n]
  return protocols.finish_metrics(ranks, matches.num_matches[valid], max_rank,
                                matches.num_matches.size, single_shot)


# ----------------------------------------------------------------------------
# Embedding models.


@functools.lru_cache(maxsize=64)
def distance_step(metric: str, mesh: Mesh) -> Callable:
  """Jitted ``(query rows, gallery) -> (tile, G)`` distances of two sides
  made by ``prepare_side``, rows split over the mesh's ``data`` axis.

  A program of its own, so that the distances are materialised once (every
  consumer reads the same rounding) and XLA:CPU fuses the matmul with its
  epilogue: compiled together with the counting kernel, a 256 x 82,161 x
  2,048 tile took 0.61 s; as two programs 0.48 + 0.08 s.
  """
  rows = P(sharding.DATA_AXIS)
  return jax.jit(jax.shard_map(
      functools.partial(side_distance, metric=metric), mesh=mesh,
      in_specs=(rows, P()), out_specs=rows))


@functools.lru_cache(maxsize=None)
def ranks_local_fn(check_nan: bool = True) -> LocalFn:
  """Local step over the distances ``row_args["dist"]`` (``distance_step``).

  ``check_nan`` False: no NaN scan of the distances (``cannot_be_nan``).
  """

  def local_fn(row_args, shared, kin, *, block):
    del shared  # The gallery side is already in the distances.
    dist = row_args["dist"]
    out = dict(ranks=counting.match_ranks_kernel(dist, **kin, block=block),
               dist=dist)
    if check_nan:
      out["nan"] = jnp.isnan(dist).any(axis=1)
    return out

  return local_fn


_prepare = distance.prepare_features_jit


def prepare_side(x, metric: str, normalize: bool, eps: float):
  """Features prepared as ``pairwise_distance`` prepares them: {"features"}
  plus, for the euclidean metric, {"sq"} (their squared norms, computed in
  their own call: see ``distance.prepared_distance``)."""
  if not (metric == "euclidean" and not normalize
          and x.dtype == np.float32):  # Else nothing to do: no extra copy.
    x = _prepare(x, metric=metric, normalize=bool(normalize), eps=float(eps))
  side = {"features": x}
  if metric == "euclidean":
    side["sq"] = distance.compute_squared_norms(x)
  return side


def side_distance(rows: dict[str, Any], gallery: dict[str, Any],
                  metric: str) -> jax.Array:
  """(b, G) distances between two sides made by ``prepare_side``."""
  return distance.prepared_distance(rows["features"], gallery["features"],
                                    metric=metric, g_sq=gallery.get("sq"),
                                    q_sq=rows.get("sq"))


def cannot_be_nan(queries: dict[str, Any], gallery: dict[str, Any]) -> bool:
  """True when no distance between the two prepared sides can be NaN.

  That holds when every squared norm is finite (so every feature is) and
  max ||q||^2 + max ||g||^2 is far below float32's overflow (then neither
  the sum of the norms nor q.g, |q.g| <= (||q||^2 + ||g||^2) / 2, can
  overflow into inf - inf). The evaluation then skips its per-tile NaN scan
  (~3% of a tile's time on CPU); otherwise the scan runs and names the query.
  """
  def largest_norm(side):
    sq = side.get("sq")
    if sq is None:
      sq = distance.compute_squared_norms(side["features"])
    if isinstance(sq, jax.Array):  # Replicated: any one copy is all of it.
      sq = sq.addressable_data(0)
    return float(np.max(np.asarray(sq)))
  bound = float(np.finfo(np.float32).max) / 4
  return largest_norm(queries) + largest_norm(gallery) < bound


def prepare_pair(q: np.ndarray, g: np.ndarray, metric: str, normalize: bool,
                 eps: float, mesh: Mesh):
  """Both sides by ``prepare_side``: the gallery replicated on the mesh, the
  queries on the host (sliced into tiles by the caller). The step then only
  multiplies."""
  gallery = prepare_side(replicate(g, mesh), metric, normalize, eps)
  queries = jax.tree.map(np.asarray,
                         prepare_side(q, metric, normalize, eps))
  return gallery, queries


def check_features(query_features, gallery_features):
  """NumPy (Q, D) and (G, D) views of the features; ValueError unless both are
  non-empty and 2-D with the same D."""
  q = np.asarray(query_features)
  g = np.asarray(gallery_features)
  if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1] or not (
      q.size and g.size):
    raise ValueError(
        "query_features (Q, D) and gallery_features (G, D) must be non-empty "
        f"2-D arrays with the same D, got shapes {q.shape} and {g.shape}.")
  return q, g


def evaluate_features(query_features, gallery_features, query_pids,
                      gallery_pids, query_camids, gallery_camids, *,
                      metric: str = "euclidean", normalize: bool = False,
                      eps: float = 1e-12, max_rank: int = 50,
                      query_tile: int | None = None, mesh: Mesh | None = None,
                      protocol: str = "market1501", num_repeats: int = 10,
                      seed: int = 0, camera_filter: bool = True
                      ) -> protocols.RankingMetrics:
  """CMC / mAP / mINP straight from features, streamed over query tiles.

  Same result as ``evaluate_ranking(pairwise_distance(q, g, metric,
  normalize=...), ...)`` without the (Q, G) matrix (see module doc).

  Args:
    query_features: (Q, D) host array (each process passes all of it).
    gallery_features: (G, D) host array; replicated on every device.
    query_pids, query_camids, gallery_pids, gallery_camids: labels as
      ``evaluate_ranking``.
    metric, normalize, eps: as ``distance.pairwise_distance``.
    max_rank, protocol, num_repeats, seed, camera_filter: as
      ``evaluate_ranking``.
    query_tile: global query rows per step; None: 256 per CPU device, 1024 per
      accelerator.
    mesh: a mesh with a ``data`` axis; default all devices.

  Returns:
    ``protocols.RankingMetrics``.
  """
  distance.check_metric(metric)
  q, g = check_features(query_features, gallery_features)
  matches, labels = protocols.prepare_matches(
      q.shape[0], g.shape[0], query_pids, gallery_pids, query_camids,
      gallery_camids, camera_filter=camera_filter,
      what="the features give Q x G")
  protocols.check_options(max_rank, query_tile, protocol, num_repeats)
  mesh = sharding.make_data_mesh() if mesh is None else mesh
  gallery, queries = prepare_pair(q, g, metric, normalize, eps, mesh)
  check_nan = not cannot_be_nan(queries, gallery)
  distances = distance_step(metric, mesh)

  def row_args(src):
    rows = jax.tree.map(lambda x: put(x[src], mesh, P(sharding.DATA_AXIS)),
                        queries)
    return {"dist": distances(rows, gallery)}

  return run_query_tiles(
      ranks_local_fn(check_nan), row_args, {}, matches, labels, mesh=mesh,
      query_tile=query_tile, max_rank=max_rank, protocol=protocol,
      num_repeats=num_repeats, seed=seed, what="feature distances")
