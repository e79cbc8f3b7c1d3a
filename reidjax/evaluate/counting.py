"""The two exact counting engines of the match ranks (protocols: ``protocols.py``).

Implementation: no per-row sort. The only ranks needed are those of the
matches, and the 0-based rank of match j (gallery index k_j, distance t_j) is a
count:

  rank_j = #{valid i : d_i < t_j  or  (d_i == t_j and i < k_j)}

which reproduces the stable-argsort tie rule exactly. Two exact ways to count,
picked per row by the cost model of ``cost_model.py`` (``method="auto"`` of
``metrics.evaluate_ranking``):

* ``"count"`` (jitted, any backend): contiguous (query_tile, G) tiles go to a
  kernel that, per block of 8 or 4 rows (on CPU, so a block stays in cache),
  loops over match slots up to the block's largest match count, each slot one
  (block, G) compare-and-count row reduction (float32 sums of 0/1, exact below
  2**24; for a large G, four slots per pass fuse into one loop).
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
  large head (random features, weak models) go to the counting kernel; rows
  whose head a sample of G / 16 columns already shows to be far too
  large skip the host pass altogether (``head_counts``).

The O(Q x M) epilogue (sorting each query's match ranks, AP, INP, CMC) runs
on the host in float64, like the references. Comparisons are made in the
distances' dtype; float64 distances are ranked in float32 unless
``jax_enable_x64`` is set (values that round to the same float32 then count as
ties); -0.0 and +0.0 tie.
"""

from __future__ import annotations

import math

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from reidjax.evaluate import cost_model
from reidjax.evaluate.protocols import Matches

# The cap on one broadcast compare of the "head" path.
_MAX_COMPARE_BYTES = 1 << 25
_UINT64_MAX = np.uint64(np.iinfo(np.uint64).max)


# ----------------------------------------------------------------------------
# "count": the jitted counting kernel.


def match_ranks_kernel(dist, order, match_idx, num_matches, removed_idx,
                       removed_mask, *, block: int,
                       slots: int | None = None):
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
    slots: match slots counted per pass over a block (at most M; a block's
      loop then runs to its largest match count rounded up to ``slots``);
      None: ``default_slots``.

  Returns:
    (B, M) int32 in input row order; entry [r, j] for j < num_matches[r] is
    the rank of match j (ties broken by gallery index), the rest is garbage.
  """
  # One materialised copy for every consumer below (see streaming.py).
  dist = lax.optimization_barrier(dist)
  num_b, num_g = dist.shape
  num_m = match_idx.shape[1]
  if slots is None:
    slots = default_slots(block, num_g)
  slots = math.gcd(int(slots), num_m)  # Whole passes within the M slots.
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

    def count_slots(step, counts):
      # ``slots`` match slots per pass over the block: XLA:CPU fuses their
      # reductions into one loop that loads each distance once.
      first = step * slots
      c = []
      for j in range(slots):
        t_j = lax.dynamic_slice_in_dim(t, first + j, 1, axis=1)  # (S, 1)
        k_j = lax.dynamic_slice_in_dim(k, first + j, 1, axis=1)
        before = (d < t_j) | ((d == t_j) & (gallery_index < k_j))
        c.append(jnp.sum(before.astype(acc_dtype), axis=1, keepdims=True))
      return lax.dynamic_update_slice_in_dim(
          counts, jnp.concatenate(c, axis=1).astype(jnp.int32), first, axis=1)

    # One (S, G) row reduction per match slot, only up to the block's largest
    # match count (rows are sorted by count, so little is wasted). A single
    # fused (S, M, G) reduction was ~5x slower on CPU.
    return lax.fori_loop(0, -(-jnp.max(n) // slots), count_slots,
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


match_ranks = jax.jit(match_ranks_kernel, static_argnames=("block", "slots"))


# On CPU a block of rows is re-read once per match slot: it should stay in
# cache (the 1 MiB L2 of the machine measured on, half of it for the block).
_CPU_BLOCK_BYTES = 1 << 19


def kernel_block(tile: int, num_gallery: int) -> int:
  """Rows per kernel block for a (local) tile of ``tile`` rows."""
  # CPU: 8 rows if they fit ``_CPU_BLOCK_BYTES``, else 4 (measured: 256 x
  # 15,913 tile, 8 rows 7.1 ms, 4 rows x 4 slots 12.5 ms; 256 x 82,161, 4
  # rows x 4 slots 76 ms, 8 rows 92 ms, 8 x 4 80 ms). Elsewhere one block per
  # tile (a sequential loop over blocks would starve a GPU).
  if jax.default_backend() == "cpu":
    rows = 8 if 8 * 4 * num_gallery <= _CPU_BLOCK_BYTES else 4
    return math.gcd(int(tile), rows)
  return int(tile)


def default_slots(block: int, num_gallery: int) -> int:
  """Match slots per pass over a block: 1 while the block fits in cache, 4
  beyond (fused, the four reductions load each distance once)."""
  return 1 if block * 4 * num_gallery <= _CPU_BLOCK_BYTES else 4


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


class NanError(ValueError):
  """A NaN in a host tile (the caller names it)."""


def head_counts(dist: np.ndarray, matches: Matches, rows: np.ndarray,
                force: bool):
  """Ranks of the matches of ``rows`` by the head method, exact.

  Rows that the cost model (``cost_model.clearly_heavy``, from a sample of
  their columns) leaves to the kernel skip the full host pass; the others go
  through ``_head_counts`` (which may still leave rows to the kernel).
  Arguments, returns and raises: as ``_head_counts``.
  """
  if force or not rows.size:
    return _head_counts(dist, matches, rows, force)
  mi = matches.match_idx[rows]
  nm = matches.num_matches[rows]
  t = np.take_along_axis(dist, mi.astype(np.intp), axis=1)
  thresh = np.where(np.arange(mi.shape[1])[None, :] < nm[:, None], t,
                    -np.inf).max(axis=1)
  pre = cost_model.clearly_heavy(dist, thresh, nm)
  if not pre.any():
    return _head_counts(dist, matches, rows, force)
  heavy = np.flatnonzero(pre)
  row_min = dist.min(axis=1)  # NaN propagates; no copy of the rows.
  if np.isnan(row_min[heavy]).any():
    raise NanError
  ranks = np.zeros((rows.size, mi.shape[1]), np.int64)
  rest = np.flatnonzero(~pre)
  if rest.size:
    sub_ranks, sub_heavy = _head_counts(dist[rest], matches, rows[rest],
                                        force)
    ranks[rest] = sub_ranks
    heavy = np.sort(np.concatenate([heavy, rest[sub_heavy]]))
  return ranks, heavy


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
    NanError: a row with a match has a NaN distance (rows without a match
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
    light &= cost_model.prefer_head(heads, nm, num_g)
  if not light.all():
    mask[~light] = False
    heads[~light] = 0

  ranks = np.zeros((num_b, num_m), np.int64)
  heavy = np.flatnonzero((nm > 0) & ~light)
  if heavy.size and np.isnan(np.min(dist[heavy])):
    raise NanError
  flat = np.flatnonzero(mask)
  if flat.size:
    index_bits = max(int(num_g - 1).bit_length(), 1)
    r = np.repeat(np.arange(num_b), heads)
    bits = dist.view(np.uint32).reshape(-1)[flat]
    if ((bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)).any():
      raise NanError
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
