"""Ranking with pair models (DuATM, CACE-Net): streamed pairwise distances, re-ranking.

A pair model's distance of (q, g) is a function of both items, so it cannot
be a matrix product. Here it is a jitted ``pair_fn(query_items,
gallery_items) -> (tq, tg)`` on tiles of items, where items are pytrees of
arrays with a leading item axis (e.g. ``{"sequence": (N, S, D), "mask": (N,
S)}``, the output of the model's ``embed``).

* ``pairwise_distance_tiled``: the full (Q, G) matrix (small sets, reports,
  tests, ``ReidEmbedder.distance``).
* ``evaluate_pair_model``: CMC / mAP / mINP of the full pairwise ranking.
* ``evaluate_two_stage``: the usual cheap alternative (Wang et al., CVPR
  2018, DuATM Sec. 4.4; CACE-Net): a first stage ranks the whole gallery by
  an embedding distance d1; the pair model re-orders only each query's top K
  of that ranking (first-stage order, ties by gallery index) by a
  second-stage score; items beyond K keep their first-stage order after
  them. ``combine`` picks the score of the top K:

  - ``"replace"``: the pair distance d2 alone;
  - ``"sum"``: d1 + d2, the sum of the two stages' distances. CACE-Net ranks
    its top K by the sum of the two cosine similarities s1 + s2; with
    distances d = 1 - s this is 2 - (s1 + s2), the same order. With a
    squared-Euclidean first stage the sum mixes the two scales as they are:
    choose ``eval.metric`` to match the pair distance's scale.

  Ties of the score are broken by gallery index. With K >= G and
  ``"replace"`` this is the full pairwise ranking. The final list is written
  as a (b, G) row of positions (top K: 0..K-1 by score; the rest: their
  first-stage positions K..G-1) and ranked by the counting kernel of
  ``counting.py``, so both protocols (Market-1501 and CUHK03 single-shot) rank
  the final list exactly.

Gallery items stay in host memory; devices receive them in tiles:

* Full pairwise: queries are processed in tiles (split over the mesh's
  ``data`` axis); for each query tile the gallery is streamed in tiles of
  ``gallery_tile`` items, each tile split over the devices on the transfer
  and all-gathered on them, and one jitted step writes the (rows, tile)
  block of pair distances into a (rows, G) distance buffer on each device
  (donated: updated in place; one compiled shape, the last gallery tile is
  padded with copies of item 0, whose distances are dropped). The host waits
  for block t before it queues the transfer of tile t + 2, so at most two
  gallery tiles are on a device. The buffer is then ranked on the device.
  The gallery crosses the host-device link once per query tile.
* Two-stage: the first stage (embedding features, small) is on the devices.
  For the second stage each device takes its queries in groups of
  ``pair_batch``; the host gathers the union of a group's top-K candidates
  (each candidate once, however many of the group's queries share it) into a
  device buffer of fixed capacity ``pair_batch * K`` items, in chunks of
  ``transfer_chunk`` items (one compiled in-place write), then one jitted
  step computes each query's K pair distances from that buffer. The
  host-device traffic is the sum of the groups' union sizes, at most Q * K
  items (less when neighbouring queries, usually of one identity in dataset
  order, share candidates); the padding rows of a query tile send nothing.

Default tile sizes are set from the bytes per item (``item_bytes``) so that
device memory stays bounded whatever the item size. Market-1501-sized pair
items of 2048 x 24 x 8 float32 maps (1,572,864 B = 1.5 MiB per item; 19,732
gallery and 3,368 query items), accelerator defaults, per device, not
counting the model variables and ``pair_fn``'s own intermediates:

* full pairwise: gallery tile 170 items (256 MiB budget) -> 2 tiles in
  flight 510 MiB (with n devices, plus the 1/n shard being gathered: 2 x
  (255 + 255/n) MiB); query tile 341 rows per device (512 MiB budget) ->
  511.5 MiB; distance buffer 341 x 19,890 float32 = 25.9 MiB (and about as
  much again in the ranking kernel). Peak about 1.05 GiB. The gallery
  (28.9 GiB) is sent ceil(3,368 / (341 x devices)) times (10 on one device).
* two-stage, K = 100: pair_batch 3 queries (512 MiB / (K x 1.5 MiB)); the
  candidate buffer holds 3 x 100 items rounded up to whole 42-item chunks
  (64 MiB budget): 336 items = 504 MiB; one chunk in flight 63 MiB; one
  query's K gathered candidates inside the step 150 MiB; the first stage
  (1,024 query rows x 19,732 float32 distances, positions and sort
  temporaries) about 0.3 GiB. Peak about 1.0 GiB. At most Q x K = 336,800
  items (493 GiB) are sent, less by the candidates shared within a group.

Host memory in both: the query and gallery items from
``features.extract_features`` (4.93 GiB + 28.9 GiB = 33.8 GiB), plus one
query tile gathered for the transfer (511.5 MiB x devices; two-stage: 3
items), the padded last gallery tile (<= 255 MiB; two-stage: one chunk per
device, 63 MiB). About 34.6 GiB in all.

Removed items (same pid, same camera) and skipped queries follow
``protocols.py``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from reidjax.evaluate import counting, distance, protocols, streaming
from reidjax import sharding

PairFn = Callable[..., jax.Array]
COMBINE = ("replace", "sum")

# Per-device byte budgets of the default tile sizes (see module doc).
GALLERY_TILE_BYTES = 256 << 20
QUERY_TILE_BYTES = 512 << 20
CANDIDATE_BYTES = 512 << 20
TRANSFER_CHUNK_BYTES = 64 << 20
# Positions are float32 in the two-stage ranking: exact below 2**24.
_MAX_GALLERY = 1 << 24

_ROWS = P(sharding.DATA_AXIS)


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


def item_bytes(items: Any) -> int:
  """Bytes of one item of a pytree of (N, ...) arrays."""
  return int(sum(math.prod(np.shape(x)[1:]) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(items)))


def default_gallery_tile(num_bytes: int = 0) -> int:
  """Gallery items per pair_fn call: 256 on CPU, 1024 on accelerators, at
  most ``GALLERY_TILE_BYTES`` of items of ``num_bytes`` each."""
  tile = 256 if jax.default_backend() == "cpu" else 1024
  if num_bytes:
    tile = min(tile, max(1, GALLERY_TILE_BYTES // num_bytes))
  return tile


def default_pair_query_tile(num_devices: int, num_bytes: int = 0) -> int:
  """Global query rows per step of the full pairwise ranking: the streaming
  default, at most ``QUERY_TILE_BYTES`` of items per device."""
  per_device = streaming.default_streaming_tile(1)
  if num_bytes:
    per_device = min(per_device, max(1, QUERY_TILE_BYTES // num_bytes))
  return per_device * num_devices


def _host(items: Any) -> Any:
  return jax.tree.map(np.asarray, items)


def _bound(pair_fn: PairFn, params: Any) -> PairFn:
  """pair_fn(a, b), or pair_fn(params, a, b) when params is not None."""
  return pair_fn if params is None else functools.partial(pair_fn, params)


def _put_rows(tree: Any, index: np.ndarray, mesh: Mesh) -> Any:
  """Host rows ``index`` of every leaf, split over the ``data`` axis."""
  return jax.tree.map(lambda x: streaming.put(x[index], mesh, _ROWS), tree)


@functools.lru_cache(maxsize=64)
def _zeros(mesh: Mesh, shape: tuple[int, ...], dtype) -> Callable:
  return jax.jit(lambda: jnp.zeros(shape, dtype),
                 out_shardings=NamedSharding(mesh, _ROWS))


def _distance_dtype():
  return jax.dtypes.canonicalize_dtype(jnp.float64)  # float32 unless x64.


# ----------------------------------------------------------------------------
# Full pairwise: gallery tiles streamed from host memory.


class GalleryStream:
  """Gallery items in host memory, sent to the devices one tile at a time.

  Tile t holds items [t * tile, (t + 1) * tile), the last one padded with
  copies of item 0 (a real item: zeros could make a pair function produce
  NaN). ``tile`` is rounded up to a multiple of the devices: a tile is split
  over them on the transfer and all-gathered on the devices.
  """

  def __init__(self, items: Any, tile: int, mesh: Mesh):
    self.items, self.mesh = _host(items), mesh
    self.num = _num_items(self.items, "gallery_items")
    devices = mesh.shape[sharding.DATA_AXIS]
    tile = min(int(tile), self.num)
    self.tile = -(-tile // devices) * devices
    self.num_tiles = -(-self.num // self.tile)
    self.width = self.num_tiles * self.tile

  def host_tile(self, t: int) -> Any:
    lo = t * self.tile
    hi = min(lo + self.tile, self.num)

    def one(x):
      part = x[lo:hi]  # A view: full tiles are not copied on the host.
      if hi - lo < self.tile:
        part = np.concatenate(
            [part, np.repeat(x[:1], self.tile - (hi - lo), axis=0)])
      return part

    return jax.tree.map(one, self.items)

  def put(self, t: int) -> Any:
    return jax.tree.map(lambda x: streaming.put(x, self.mesh, _ROWS),
                        self.host_tile(t))


@functools.lru_cache(maxsize=64)
def pair_block_step(pair_fn: PairFn, mesh: Mesh) -> Callable:
  """Jitted ``(params, query_rows, gallery_tile, buffer, offset) -> buffer``.

  Writes the (rows, tile) pair distances of each device's query rows to the
  all-gathered gallery tile at column ``offset`` of its (rows, width)
  buffer (donated). One compiled shape per (rows, tile, width).
  """

  def local(params, query_items, gallery_shard, buffer, offset):
    tile = jax.tree.map(
        lambda x: lax.all_gather(x, sharding.DATA_AXIS, tiled=True),
        gallery_shard)
    block = _bound(pair_fn, params)(query_items, tile)
    return lax.dynamic_update_slice_in_dim(buffer, block.astype(buffer.dtype),
                                           offset, axis=1)

  return jax.jit(jax.shard_map(local, mesh=mesh,
                               in_specs=(P(), _ROWS, _ROWS, _ROWS, P()),
                               out_specs=_ROWS, check_vma=False),
                 donate_argnums=(3,))


def stream_pair_rows(pair_fn: PairFn, query_rows: Any, stream: GalleryStream,
                     params: Any = None) -> jax.Array:
  """(rows, stream.width) pair distances of device query rows to the gallery.

  ``query_rows``: pytree of (rows, ...) arrays split over ``data``. Columns
  past ``stream.num`` are padding. At most two gallery tiles are on a device
  at a time (see module doc).
  """
  rows = _num_items(query_rows, "query rows")
  step = pair_block_step(pair_fn, stream.mesh)
  buffer = _zeros(stream.mesh, (rows, stream.width), _distance_dtype())()
  tile = stream.put(0)
  for t in range(stream.num_tiles):
    buffer = step(params, query_rows, tile, buffer,
                  np.int32(t * stream.tile))
    tile = stream.put(t + 1) if t + 1 < stream.num_tiles else None
    buffer.block_until_ready()  # Block t done: tile t is freed.
  return buffer


@functools.lru_cache(maxsize=64)
def _buffer_local_fn(num_gallery: int) -> streaming.LocalFn:
  """Ranks the rows of a streamed distance buffer."""

  def local_fn(row_args, shared, kin, *, block):
    del shared
    dist = lax.optimization_barrier(row_args["dist"][:, :num_gallery])
    return dict(ranks=counting.match_ranks_kernel(dist, **kin, block=block),
                nan=jnp.isnan(dist).any(axis=1), dist=dist)

  return local_fn


def _mesh_and_params(mesh: Mesh | None, params: Any):
  mesh = sharding.make_data_mesh() if mesh is None else mesh
  return mesh, (None if params is None else streaming.replicate(params, mesh))


def pairwise_distance_tiled(pair_fn: PairFn, query_items: Any,
                            gallery_items: Any, *,
                            query_tile: int | None = None,
                            gallery_tile: int | None = None,
                            mesh: Mesh | None = None,
                            params: Any = None) -> np.ndarray:
  """The full (Q, G) pair-distance matrix, gallery streamed in tiles.

  Args:
    pair_fn: ``(query tile items, gallery tile items) -> (tq, tg)``, or
      ``(params, a, b) -> ...`` with ``params``.
    query_items: pytree of (Q, ...) arrays.
    gallery_items: pytree of (G, ...) arrays.
    query_tile: query rows per step (rounded up to a multiple of the
      devices); None: ``default_pair_query_tile``.
    gallery_tile: gallery items per pair_fn call; None:
      ``default_gallery_tile``.
    mesh: mesh with a ``data`` axis; default all devices.
    params: optional first argument of pair_fn, replicated.

  Returns:
    (Q, G) host array.
  """
  query_items, gallery_items = _host(query_items), _host(gallery_items)
  num_q = _num_items(query_items, "query_items")
  mesh, params = _mesh_and_params(mesh, params)
  devices = mesh.shape[sharding.DATA_AXIS]
  stream = GalleryStream(gallery_items, gallery_tile or default_gallery_tile(
      item_bytes(gallery_items)), mesh)
  query_tile = query_tile or default_pair_query_tile(devices,
                                                     item_bytes(query_items))
  tile = -(-min(int(query_tile), num_q) // devices) * devices
  out = np.empty((num_q, stream.num), _distance_dtype())
  for lo in range(0, num_q, tile):
    src = np.minimum(np.arange(lo, lo + tile), num_q - 1)
    dist = stream_pair_rows(pair_fn, _put_rows(query_items, src, mesh), stream,
                            params)
    n = min(tile, num_q - lo)
    out[lo:lo + n] = streaming.to_host(dist)[:n, :stream.num]
  return out


def evaluate_pair_model(pair_fn: PairFn, query_items: Any, gallery_items: Any,
                        query_pids, gallery_pids, query_camids, gallery_camids,
                        *, query_tile: int | None = None,
                        gallery_tile: int | None = None,
                        mesh: Mesh | None = None, max_rank: int = 50,
                        protocol: str = "market1501", num_repeats: int = 10,
                        seed: int = 0, camera_filter: bool = True,
                        params: Any = None) -> protocols.RankingMetrics:
  """Metrics of the full pairwise ranking, gallery streamed (see module doc).

  Args:
    pair_fn: ``(query tile items, gallery tile items) -> (tq, tg)`` distances,
      smaller = more similar (or ``(params, a, b) -> ...`` with ``params``);
      traced inside a jitted step. Keep the same function object between
      calls to reuse the compiled step.
    query_items, gallery_items: pytrees of (Q, ...) / (G, ...) host arrays.
    query_pids, query_camids, gallery_pids, gallery_camids: labels.
    query_tile: global query rows per step; None:
      ``default_pair_query_tile``.
    gallery_tile: gallery items per pair_fn call (the last tile is padded);
      None: ``default_gallery_tile``.
    mesh: mesh with a ``data`` axis; default all devices.
    max_rank, protocol, num_repeats, seed, camera_filter: as
      ``metrics.evaluate_ranking``.
    params: optional pytree (e.g. model variables) passed as pair_fn's first
      argument; replicated on the mesh. New values reuse the compiled step.

  Returns:
    ``protocols.RankingMetrics``.
  """
  query_items, gallery_items = _host(query_items), _host(gallery_items)
  num_q = _num_items(query_items, "query_items")
  num_g = _num_items(gallery_items, "gallery_items")
  matches, labels = protocols.prepare_matches(
      num_q, num_g, query_pids, gallery_pids, query_camids, gallery_camids,
      camera_filter=camera_filter, what="the items give Q x G")
  protocols.check_options(max_rank, query_tile, protocol, num_repeats)
  mesh, params = _mesh_and_params(mesh, params)
  stream = GalleryStream(gallery_items, gallery_tile or default_gallery_tile(
      item_bytes(gallery_items)), mesh)

  def row_args(src):
    return {"dist": stream_pair_rows(pair_fn, _put_rows(query_items, src, mesh),
                                     stream, params)}

  query_tile = query_tile or default_pair_query_tile(
      mesh.shape[sharding.DATA_AXIS], item_bytes(query_items))
  return streaming.run_query_tiles(
      _buffer_local_fn(num_g), row_args, {}, matches, labels, mesh=mesh,
      query_tile=query_tile, max_rank=max_rank, protocol=protocol,
      num_repeats=num_repeats, seed=seed, what="pair distances")


# ----------------------------------------------------------------------------
# Two-stage: embedding ranking, pair re-ranking of the top K.


@functools.lru_cache(maxsize=64)
def first_stage_step(metric: str, top_k: int, mesh: Mesh) -> Callable:
  """Jitted ``(query rows, gallery) -> dict`` of the first stage (both sides
  as ``streaming.prepare_side`` makes them).

  Per row: ``top_idx`` (b, K) int32, the first K gallery items in
  (distance, index) order; ``d1_top`` (b, K) their distances;
  ``position`` (b, G) float32, each item's position in that order;
  ``nan`` (b,) bool.
  """

  def local(rows, gallery):
    d1 = lax.optimization_barrier(streaming.side_distance(rows, gallery,
                                                          metric))
    num_b, num_g = d1.shape
    index = lax.broadcasted_iota(jnp.int32, (num_b, num_g), 1)
    # (distance, index) order; lax.sort ties -0.0 and +0.0 as metrics.py does.
    _, order = lax.sort((d1, index), dimension=1, num_keys=2)
    rows = jnp.arange(num_b)[:, None]
    position = jnp.zeros((num_b, num_g), jnp.float32).at[rows, order].set(
        index.astype(jnp.float32))
    top_idx = order[:, :top_k]
    return dict(top_idx=top_idx, d1_top=d1[rows, top_idx], position=position,
                nan=jnp.isnan(d1).any(axis=1))

  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(_ROWS, P()),
                               out_specs=_ROWS, check_vma=False))


@functools.lru_cache(maxsize=64)
def _write_rows_step(mesh: Mesh) -> Callable:
  """Jitted in-place ``buffer[offset:offset + c] = chunk`` on each device."""

  def local(buffer, chunk, offset):
    return jax.tree.map(
        lambda b, c: lax.dynamic_update_slice_in_dim(b, c, offset, axis=0),
        buffer, chunk)

  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(_ROWS, _ROWS, P()),
                               out_specs=_ROWS, check_vma=False),
                 donate_argnums=(0,))


@functools.lru_cache(maxsize=64)
def candidate_step(pair_fn: PairFn, mesh: Mesh) -> Callable:
  """Jitted ``(params, query_rows, candidates, local_idx) -> (rows, K)``.

  Per device: query row r's pair distances to the K candidates
  ``candidates[local_idx[r]]`` of its buffer, one query at a time.
  """

  def local(params, query_items, candidates, local_idx):
    fn = _bound(pair_fn, params)

    def one(args):
      q_item, idx = args
      g = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), candidates)
      return fn(jax.tree.map(lambda x: x[None], q_item), g)[0]

    return lax.map(one, (query_items, local_idx))

  return jax.jit(jax.shard_map(local, mesh=mesh,
                               in_specs=(P(), _ROWS, _ROWS, _ROWS),
                               out_specs=_ROWS, check_vma=False))


@functools.lru_cache(maxsize=64)
def _concat_rows(mesh: Mesh, rows: int) -> Callable:
  def local(parts):
    return jnp.concatenate(parts, axis=0)[:rows]
  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(_ROWS,),
                               out_specs=_ROWS, check_vma=False))


class CandidateBuffer:
  """Each device's buffer of gallery items for a group of queries (see
  module doc): ``capacity`` items, written in chunks of ``chunk`` items."""

  def __init__(self, gallery_items: Any, capacity: int, chunk: int,
               mesh: Mesh):
    self.items, self.mesh = gallery_items, mesh
    self.devices = mesh.shape[sharding.DATA_AXIS]
    self.chunk = max(1, min(int(chunk), int(capacity)))
    self.capacity = -(-int(capacity) // self.chunk) * self.chunk
    self.buffer = jax.tree.map(
        lambda x: _zeros(mesh, (self.devices * self.capacity,) + x.shape[1:],
                         x.dtype)(), gallery_items)
    self.items_sent = 0

  def load(self, unions: list[np.ndarray]) -> None:
    """Writes ``unions[d]`` (gallery indices, <= capacity) to device d."""
    write = _write_rows_step(self.mesh)
    largest = max(u.size for u in unions)
    for lo in range(0, largest, self.chunk):
      # Every device takes a whole chunk; past the end of its union it gets
      # copies of real items (not read).
      ids = np.concatenate([
          np.resize(u[lo:lo + self.chunk], self.chunk) if u.size > lo
          else np.zeros(self.chunk, np.int64) for u in unions])
      chunk = _put_rows(self.items, ids, self.mesh)
      self.buffer = write(self.buffer, chunk, np.int32(lo))
      self.items_sent += sum(min(self.chunk, max(u.size - lo, 0))
                             for u in unions)
      jax.block_until_ready(self.buffer)  # One chunk in flight at a time.


def rerank_candidates(pair_fn: PairFn, query_items: Any, gallery_items: Any,
                      src: np.ndarray, top_idx: np.ndarray, *, mesh: Mesh,
                      pair_batch: int, transfer_chunk: int,
                      params: Any = None,
                      stats: dict[str, int] | None = None) -> jax.Array:
  """(tile, K) pair distances of a query tile to each row's top-K items.

  Args:
    pair_fn: as ``evaluate_two_stage``.
    query_items, gallery_items: pytrees of host arrays.
    src: (tile,) global query index of each row (tile a multiple of the
      devices; device d holds rows [d * b, (d + 1) * b), b = tile / devices).
    top_idx: (tile, K) host int gallery indices of each row's candidates.
    mesh, pair_batch, transfer_chunk, params: see ``evaluate_two_stage``.
    stats: if given, ``items_sent`` is increased by the gallery items sent.

  Returns:
    (tile, K) distances split over ``data`` like the rows.
  """
  tile, top_k = top_idx.shape
  devices = mesh.shape[sharding.DATA_AXIS]
  local_rows = tile // devices
  group = max(1, min(int(pair_batch), local_rows))
  buffer = CandidateBuffer(gallery_items, group * top_k, transfer_chunk, mesh)
  step = candidate_step(pair_fn, mesh)
  # Padding rows (copies of the tile's first query, dropped by the caller)
  # get no candidates of their own: they point at their buffer's item 0.
  padding = np.zeros(tile, bool)
  padding[1:] = src[1:] == src[0]
  outs = []
  for lo in range(0, local_rows, group):
    local = np.minimum(np.arange(lo, lo + group), local_rows - 1)
    sel = (np.arange(devices)[:, None] * local_rows + local[None]).reshape(-1)
    unions, local_idx = [], []
    for rows in sel.reshape(devices, group):
      real = ~padding[rows]
      idx = np.zeros((group, top_k), np.int64)
      if real.any():
        union, inverse = np.unique(top_idx[rows[real]], return_inverse=True)
        idx[real] = inverse.reshape(-1, top_k)
      else:  # Nothing to send: the rows read whatever the buffer holds.
        union = np.zeros(0, np.int64)
      unions.append(union)
      local_idx.append(idx)
    if outs:  # The previous group has read the buffer before it is rewritten.
      jax.block_until_ready(outs[-1])
    buffer.load(unions)
    outs.append(step(params, _put_rows(query_items, src[sel], mesh),
                     buffer.buffer,
                     streaming.put(np.concatenate(local_idx).astype(np.int32),
                                   mesh, _ROWS)))
  if stats is not None:
    stats["items_sent"] = stats.get("items_sent", 0) + buffer.items_sent
  return _concat_rows(mesh, local_rows)(outs)


@functools.lru_cache(maxsize=64)
def two_stage_local_fn(combine: str) -> streaming.LocalFn:
  """Ranks the final two-stage list (see module doc) from the row args."""

  def local_fn(row_args, shared, kin, *, block):
    del shared
    top_idx, pair = row_args["top_idx"], row_args["pair"]
    score = pair if combine == "replace" else row_args["d1_top"] + pair
    _, by_score = lax.sort((score, top_idx), dimension=1, num_keys=2)
    num_b, top_k = by_score.shape
    final = row_args["position"].at[jnp.arange(num_b)[:, None], by_score].set(
        lax.broadcasted_iota(jnp.float32, (num_b, top_k), 1))
    final = lax.optimization_barrier(final)
    nan = row_args["nan"] | jnp.isnan(score).any(axis=1)
    return dict(ranks=counting.match_ranks_kernel(final, **kin, block=block),
                nan=nan, dist=final)

  return local_fn


def evaluate_two_stage(pair_fn: PairFn, query_items: Any, gallery_items: Any,
                       query_features, gallery_features, query_pids,
                       gallery_pids, query_camids, gallery_camids, *,
                       top_k: int = 100, combine: str = "replace",
                       metric: str = "euclidean", normalize: bool = False,
                       eps: float = 1e-12, query_tile: int | None = None,
                       pair_batch: int | None = None,
                       transfer_chunk: int | None = None,
                       mesh: Mesh | None = None, max_rank: int = 50,
                       protocol: str = "market1501", num_repeats: int = 10,
                       seed: int = 0, camera_filter: bool = True,
                       params: Any = None,
                       stats: dict[str, int] | None = None
                       ) -> protocols.RankingMetrics:
  """Embedding ranking, then pair re-ranking of each query's top K (module doc).

  Args:
    pair_fn: ``(query items (1, ...), gallery items (K, ...)) -> (1, K)``
      distances (the same function as for ``evaluate_pair_model``).
    query_items, gallery_items: pytrees of (Q, ...) / (G, ...) host arrays.
    query_features, gallery_features: (Q, D) / (G, D) first-stage features.
    query_pids, query_camids, gallery_pids, gallery_camids: labels.
    top_k: items re-ranked per query (clipped to G).
    combine: ``"replace"`` (rank the top K by pair distance) or ``"sum"``
      (by first-stage + pair distance); see module doc.
    metric, normalize, eps: first-stage distance (``distance.py``).
    query_tile: global query rows per first-stage step.
    pair_batch: queries per device whose candidates share one device buffer
      (``pair_batch * top_k`` items); None: as many as fit
      ``CANDIDATE_BYTES``.
    transfer_chunk: gallery items per device per host-to-device transfer;
      None: as many as fit ``TRANSFER_CHUNK_BYTES``.
    mesh: mesh with a ``data`` axis; default all devices.
    max_rank, protocol, num_repeats, seed, camera_filter: as
      ``metrics.evaluate_ranking`` (both protocols).
    params: optional first argument of pair_fn (see ``evaluate_pair_model``).
    stats: if given, ``items_sent`` is set to the gallery items sent to the
      devices for the second stage.

  Returns:
    ``protocols.RankingMetrics`` of the final list.
  """
  distance.check_metric(metric)
  if combine not in COMBINE:
    raise ValueError(f"combine (eval.rerank_combine) must be one of {COMBINE}, "
                     f"got {combine!r}.")
  query_items, gallery_items = _host(query_items), _host(gallery_items)
  num_q = _num_items(query_items, "query_items")
  num_g = _num_items(gallery_items, "gallery_items")
  q, g = streaming.check_features(query_features, gallery_features)
  if (q.shape[0], g.shape[0]) != (num_q, num_g):
    raise ValueError(
        f"{num_q} query items but {q.shape[0]} query features, or {num_g} "
        f"gallery items but {g.shape[0]} gallery features.")
  if not isinstance(top_k, (int, np.integer)) or top_k < 1:
    raise ValueError(f"top_k must be a positive int, got {top_k!r}.")
  for name, value in (("pair_batch", pair_batch),
                      ("transfer_chunk", transfer_chunk)):
    if value is not None and (not isinstance(value, (int, np.integer))
                              or value < 1):
      raise ValueError(f"{name} must be a positive int or None, got {value!r}.")
  if num_g >= _MAX_GALLERY:
    raise ValueError(f"Two-stage ranking handles fewer than {_MAX_GALLERY} "
                     f"gallery items, got {num_g}.")
  matches, labels = protocols.prepare_matches(
      num_q, num_g, query_pids, gallery_pids, query_camids, gallery_camids,
      camera_filter=camera_filter, what="the items give Q x G")
  protocols.check_options(max_rank, query_tile, protocol, num_repeats)
  mesh, params = _mesh_and_params(mesh, params)
  top_k = int(min(top_k, num_g))
  size = max(1, item_bytes(gallery_items))
  pair_batch = pair_batch or max(1, CANDIDATE_BYTES // (top_k * size))
  transfer_chunk = transfer_chunk or max(1, TRANSFER_CHUNK_BYTES // size)
  g_prep, q_prep = streaming.prepare_pair(q, g, metric, normalize, eps, mesh)
  first = first_stage_step(metric, top_k, mesh)

  def row_args(src):
    out = first(jax.tree.map(lambda x: streaming.put(x[src], mesh, _ROWS),
                             q_prep), g_prep)
    out["pair"] = rerank_candidates(
        pair_fn, query_items, gallery_items, src,
        streaming.to_host(out["top_idx"]), mesh=mesh, pair_batch=pair_batch,
        transfer_chunk=transfer_chunk, params=params, stats=stats)
    return out

  if stats is not None:
    stats["items_sent"] = 0
  return streaming.run_query_tiles(
      two_stage_local_fn(combine), row_args, {}, matches, labels, mesh=mesh,
      query_tile=query_tile, max_rank=max_rank, protocol=protocol,
      num_repeats=num_repeats, seed=seed, what="two-stage distances")
