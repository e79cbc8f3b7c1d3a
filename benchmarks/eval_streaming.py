r"""Benchmarks streaming evaluation from features at MSMT17 test size.

MSMT17's test split: 11,659 queries x 82,161 gallery images of 3,060
identities (~27 gallery images each, no distractors), 15 cameras; D = 2048
random float32 features (a random model: every match is deep in its list, the
worst case for the counting work). ``streaming.evaluate_features`` never
builds the (Q, G) matrix; the script reports

* seconds: the timed call (after a warm-up call on one query tile, which
  compiles the same step), and the warm-up itself;
* peak RSS of the process (``resource.getrusage(...).ru_maxrss``; includes
  the 0.8 GB of host features, allocated by ``sharding.host_empty`` as the
  evaluator's extraction allocates them, so that on CPU the device uses the
  gallery in place);
* the machine's float32 matmul rate, measured in this run before and after
  the evaluation (a (tile, D) x (D, G) product with the gallery at HIGHEST
  precision: the step's own product), and the FLOP floor 2 Q G D / (best rate): the time
  the distances alone take (shared CPUs: the rate itself varies ~2x);
* a check: for a random subset of queries, the streamed metrics equal
  ``evaluate_ranking`` on their explicitly computed distance rows.

Prints one JSON object.

  python benchmarks/eval_streaming.py [--num_query 11659] [--dim 2048]
      [--query_subset N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from reidjax import sharding
from reidjax.evaluate import distance, metrics, streaming


def make_labels(seed, num_query, num_gallery, num_ids, num_cams):
  rng = np.random.default_rng(seed)
  # Gallery images per id: mean num_gallery / num_ids, spread like MSMT17's.
  weights = rng.gamma(4.0, 1.0, num_ids)
  per_id = 1 + np.floor(weights / weights.sum()
                        * (num_gallery - num_ids)).astype(int)
  per_id[:num_gallery - per_id.sum()] += 1  # Exactly num_gallery.
  g_pids = np.repeat(np.arange(1, num_ids + 1), per_id)
  q_pids = np.sort(np.concatenate([
      np.arange(1, num_ids + 1),
      rng.integers(1, num_ids + 1, num_query - num_ids)]))
  return (q_pids, g_pids, rng.integers(0, num_cams, num_query),
          rng.integers(0, num_cams, num_gallery))


def matmul_rate(rows: int, dim: int, cols: int, repeats: int = 3,
                gallery=None):
  """float32 FLOP/s of a (rows, dim) x (dim, cols) product, best of repeats.

  ``gallery``: a (cols, dim) host array to multiply by (contracting both
  feature axes, as the evaluation does); on CPU an aligned one is used in
  place, so the measurement adds no gallery-sized array to the peak RSS.
  """
  a = jnp.asarray(np.random.default_rng(0).standard_normal((rows, dim),
                                                           np.float32))
  if gallery is None:
    b = jnp.ones((cols, dim), jnp.float32)
  else:
    b = jax.device_put(gallery)
  dot = jax.jit(lambda x, y: jax.lax.dot_general(
      x, y, (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST))
  dot(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * rows * dim * cols / best


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num_query", type=int, default=11659)
  parser.add_argument("--num_gallery", type=int, default=82161)
  parser.add_argument("--num_ids", type=int, default=3060)
  parser.add_argument("--num_cams", type=int, default=15)
  parser.add_argument("--dim", type=int, default=2048)
  parser.add_argument("--metric", default="euclidean")
  parser.add_argument("--query_tile", type=int, default=None)
  parser.add_argument("--check_queries", type=int, default=64)
  parser.add_argument("--query_subset", type=int, default=0,
                      help="evaluate only this many queries spread over the "
                      "split (labels drawn at full size; quick runs)")
  args = parser.parse_args()
  load_start = os.getloadavg()[0]

  labels = make_labels(args.seed, args.num_query, args.num_gallery,
                       args.num_ids, args.num_cams)
  rng = np.random.default_rng(args.seed + 1)
  if args.query_subset:
    keep = np.linspace(0, args.num_query - 1, args.query_subset).astype(int)
    labels = (labels[0][keep], labels[1], labels[2][keep], labels[3])
    args.num_query = args.query_subset
  # Allocated as the evaluator's feature extraction allocates them
  # (``sharding.host_empty``: on CPU the gallery is then ranked in place).
  q = sharding.host_empty((args.num_query, args.dim), np.float32)
  g = sharding.host_empty((args.num_gallery, args.dim), np.float32)
  rng.standard_normal(dtype=np.float32, out=q)
  rng.standard_normal(dtype=np.float32, out=g)
  devices = jax.device_count()
  tile = args.query_tile or streaming.default_streaming_tile(devices)

  rate_before = matmul_rate(max(tile // devices, 1), args.dim,
                            args.num_gallery, gallery=g)
  matches, _ = metrics.prepare_matches(args.num_query, args.num_gallery,
                                       *labels)
  # Warm-up on one tile of queries that includes the ones with the most
  # matches / removed items: the same padded shapes, the same compiled step.
  extremes = [np.argmax(matches.num_matches), np.argmax(matches.num_removed)]
  first = np.concatenate([extremes, np.setdiff1d(np.arange(tile + 2),
                                                 extremes)])[:tile]
  sub = lambda x: x[first]
  start = time.perf_counter()
  streaming.evaluate_features(sub(q), g, sub(labels[0]), labels[1],
                              sub(labels[2]), labels[3], metric=args.metric,
                              query_tile=tile)
  warmup_s = time.perf_counter() - start

  start = time.perf_counter()
  result = streaming.evaluate_features(q, g, *labels, metric=args.metric,
                                       query_tile=tile)
  seconds = time.perf_counter() - start
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  rate_after = matmul_rate(max(tile // devices, 1), args.dim, args.num_gallery,
                           gallery=g)
  rate = max(rate_before, rate_after)

  # Check a subset against the explicit rows.
  check = rng.choice(args.num_query, args.check_queries, replace=False)
  rows = np.asarray(distance.pairwise_distance(q[check], g,
                                               metric=args.metric))
  expected = metrics.evaluate_ranking(rows, labels[0][check], labels[1],
                                      labels[2][check], labels[3])
  got = streaming.evaluate_features(q[check], g, labels[0][check], labels[1],
                                    labels[2][check], labels[3],
                                    metric=args.metric, query_tile=tile)
  diff = float(max(np.abs(got.cmc - expected.cmc).max(),
                   abs(got.mAP - expected.mAP), abs(got.mINP - expected.mINP)))

  flops = 2.0 * args.num_query * args.num_gallery * args.dim
  per_id = np.bincount(labels[1])[1:]
  report = {
      "problem": {
          "num_query": args.num_query, "num_gallery": args.num_gallery,
          "num_ids": args.num_ids, "num_cams": args.num_cams,
          "dim": args.dim, "metric": args.metric,
          "gallery_per_id_mean": float(per_id.mean()),
          "gallery_per_id_max": int(per_id.max()),
          "matches_per_query_mean": float(matches.num_matches.mean()),
          "match_pad": int(matches.match_idx.shape[1]),
          "query_tile": tile, "devices": devices,
      },
      "seconds": seconds,
      "warmup_one_tile_seconds": warmup_s,
      "peak_rss_gib": peak_rss / 2**30,
      "features_gib": (q.nbytes + g.nbytes) / 2**30,
      "matmul_gflops_before": rate_before / 1e9,
      "matmul_gflops_after": rate_after / 1e9,
      "flop_floor_seconds": flops / rate,
      "seconds_over_floor": seconds / (flops / rate),
      "check_max_abs_diff": diff,
      "check_queries": int(args.check_queries),
      "metrics": {k: v for k, v in result.to_dict().items() if k != "cmc"},
      "jax_version": jax.__version__,
      "backend": jax.default_backend(),
      "cpu_count": os.cpu_count(),
      "load_avg_1m_start": load_start,
      "load_avg_1m": os.getloadavg()[0],
  }
  print(json.dumps(report))


if __name__ == "__main__":
  main()
