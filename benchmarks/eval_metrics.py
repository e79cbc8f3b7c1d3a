r"""Benchmarks ``evaluate_ranking`` against the two NumPy references.

A random Market-1501-sized problem: 3368 queries x 15913 gallery items, 750
test ids (gallery counts per id drawn with mean ~14 and a long tail) plus pid 0
distractors, 6 cameras. Distances are squared Euclidean between random
features (id centre + camera bias + noise), so rankings have realistic
structure. The JAX path is timed after one warm-up (compile) call; all three
must agree to 1e-6. Prints one JSON object to stdout.

  python benchmarks/eval_metrics.py [--repeats 3] [--query_tile 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from reidjax.evaluate import distance, metrics, numpy_reference


def make_problem(seed: int, num_query: int, num_gallery: int, num_ids: int,
                 num_cams: int, dim: int = 128):
  """Random labels and a (num_query, num_gallery) float32 distance matrix."""
  rng = np.random.default_rng(seed)
  ids = np.arange(1, num_ids + 1)
  # Gallery images per id: 1 + negative binomial, mean ~14, long tail.
  per_id = 1 + rng.negative_binomial(3, 3 / 16, size=num_ids)
  per_id = np.minimum(per_id, (num_gallery - num_ids) // num_ids * 4)
  g_pids = np.repeat(ids, per_id)
  num_distractors = num_gallery - g_pids.size
  if num_distractors < 0:
    raise ValueError("num_gallery too small for the drawn id counts.")
  g_pids = np.sort(np.concatenate([np.zeros(num_distractors, int), g_pids]))
  g_camids = rng.integers(0, num_cams, num_gallery)
  # Every id gets a query, the rest are spread at random; Market-like order.
  q_pids = np.sort(np.concatenate(
      [ids, rng.choice(ids, num_query - num_ids)]))
  q_camids = rng.integers(0, num_cams, num_query)

  centres = rng.normal(size=(num_ids + 1, dim)).astype(np.float32)
  cam_bias = 0.6 * rng.normal(size=(num_cams, dim)).astype(np.float32)

  def features(pids, camids):
    f = centres[pids] + cam_bias[camids]
    f += 1.1 * rng.normal(size=f.shape).astype(np.float32)
    f[pids == 0] = 1.5 * rng.normal(size=((pids == 0).sum(), dim))
    return f

  distmat = np.asarray(distance.pairwise_distance(
      features(q_pids, q_camids), features(g_pids, g_camids)))
  return distmat, q_pids, g_pids, q_camids, g_camids


def _max_diff(a: metrics.RankingMetrics, b: metrics.RankingMetrics) -> float:
  if (a.num_valid_queries, a.num_skipped_queries) != (
      b.num_valid_queries, b.num_skipped_queries):
    return float("inf")
  return float(max(np.abs(a.cmc - b.cmc).max(), abs(a.mAP - b.mAP),
                   abs(a.mINP - b.mINP)))


def _timed(fn, *args, **kwargs):
  start = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num_query", type=int, default=3368)
  parser.add_argument("--num_gallery", type=int, default=15913)
  parser.add_argument("--num_ids", type=int, default=750)
  parser.add_argument("--num_cams", type=int, default=6)
  parser.add_argument("--max_rank", type=int, default=50)
  parser.add_argument("--query_tile", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed runs of the JAX path (the minimum is kept)")
  args = parser.parse_args()

  problem = make_problem(args.seed, args.num_query, args.num_gallery,
                         args.num_ids, args.num_cams)
  distmat, q_pids, g_pids, _, g_camids = problem
  kwargs = dict(max_rank=args.max_rank)

  _, compile_s = _timed(metrics.evaluate_ranking, *problem,
                        query_tile=args.query_tile, **kwargs)
  jax_runs = []
  for _ in range(args.repeats):
    result, seconds = _timed(metrics.evaluate_ranking, *problem,
                             query_tile=args.query_tile, **kwargs)
    jax_runs.append(seconds)
  loop, loop_s = _timed(numpy_reference.evaluate_ranking_loop, *problem,
                        **kwargs)
  vec, vec_s = _timed(numpy_reference.evaluate_ranking_vectorized_numpy,
                      *problem, **kwargs)

  jax_s = min(jax_runs)
  # pylint: disable-next=protected-access
  default_tile = metrics._default_query_tile()
  diffs = {"jax_vs_loop": _max_diff(result, loop),
           "vectorized_vs_loop": _max_diff(vec, loop)}
  agree = all(d <= 1e-6 for d in diffs.values())
  gallery_per_id = np.bincount(g_pids[g_pids > 0])
  gallery_per_id = gallery_per_id[gallery_per_id > 0]
  report = {
      "problem": {
          "num_query": int(distmat.shape[0]),
          "num_gallery": int(distmat.shape[1]),
          "num_ids": int(np.unique(q_pids).size),
          "num_distractors": int((g_pids == 0).sum()),
          "num_cams": int(np.unique(g_camids).size),
          "gallery_per_id_mean": float(gallery_per_id.mean()),
          "gallery_per_id_max": int(gallery_per_id.max()),
          "dtype": str(distmat.dtype),
          "max_rank": args.max_rank,
          "query_tile": args.query_tile or default_tile,
      },
      "seconds": {
          "jax": jax_s,
          "jax_runs": jax_runs,
          "jax_first_call_with_compile": compile_s,
          "numpy_loop": loop_s,
          "numpy_vectorized": vec_s,
      },
      "speedup": {
          "jax_vs_numpy_loop": loop_s / jax_s,
          "jax_vs_numpy_vectorized": vec_s / jax_s,
      },
      "max_abs_diff": diffs,
      "agree_1e-6": agree,
      "jax_version": jax.__version__,
      "device": str(jax.devices()[0]),
      "backend": jax.default_backend(),
      "cpu_count": os.cpu_count(),
      # Other jobs share the CPUs: compare ratios from one run, not absolutes.
      "load_avg_1m": os.getloadavg()[0],
      "metrics": result.to_dict(),
  }
  report["metrics"]["cmc"] = [round(x, 6) for x in report["metrics"]["cmc"]]
  print(json.dumps(report))
  if not agree:
    sys.exit(1)


if __name__ == "__main__":
  main()
