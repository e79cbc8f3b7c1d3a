r"""Benchmarks the sparse k-reciprocal re-ranking at MSMT17 test size.

MSMT17's test split (11,659 queries x 82,161 gallery images, 3,060 ids, 15
cameras; labels as ``eval_streaming.py`` draws them), D = 2048 random float32
features (a random model: the worst case for the ranking, the usual one for
the re-ranking's sparse sets). ``rerank_sparse.evaluate_sparse_rerank``
(k1 = 20, k2 = 6, lambda = 0.3) never builds a (P, P) or (Q, G) matrix; the
dense path would need 24 P^2 bytes = 197 GiB here. Reports:

* seconds, in all and per step (neighbour lists, weights, query expansion,
  inverted index, final ranking), and the first call's compile overhead is
  included (one call: a warm-up would double a run of minutes);
* peak RSS of the process (``ru_maxrss``; goal <= 8 GiB);
* the FLOP floor: 2 P^2 D (neighbour lists) + 2 Q G D (final distances)
  FLOP at the float32 matmul rate measured in this run (a (tile, D) x (D, P)
  ``jnp.dot`` at HIGHEST precision, before and after; the best is used),
  and seconds / floor;
* ``--check``: on a small problem (``--check_size`` items) the sparse
  metrics equal the dense path's (``rerank.k_reciprocal_rerank_features``).

Runs unchanged on an accelerator (the distance tiles on the device, the
sparse bookkeeping on the host). ``--scale`` shrinks Q and G for a quick run.

  python benchmarks/rerank_streaming.py [--scale 1.0] [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_streaming import make_labels, matmul_rate  # noqa: E402  pylint: disable=g-import-not-at-top

from reidjax.evaluate import metrics, rerank, rerank_sparse  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num_query", type=int, default=11659)
  parser.add_argument("--num_gallery", type=int, default=82161)
  parser.add_argument("--num_ids", type=int, default=3060)
  parser.add_argument("--num_cams", type=int, default=15)
  parser.add_argument("--dim", type=int, default=2048)
  parser.add_argument("--scale", type=float, default=1.0)
  parser.add_argument("--metric", default="euclidean")
  parser.add_argument("--k1", type=int, default=20)
  parser.add_argument("--k2", type=int, default=6)
  parser.add_argument("--lambda_value", type=float, default=0.3)
  parser.add_argument("--row_tile", type=int, default=None)
  parser.add_argument("--check", action="store_true")
  parser.add_argument("--check_size", type=int, default=1500)
  args = parser.parse_args()
  load_start = os.getloadavg()[0]
  num_q = max(1, int(args.num_query * args.scale))
  num_g = max(1, int(args.num_gallery * args.scale))
  num_ids = max(1, min(int(args.num_ids * args.scale), num_q))
  labels = make_labels(args.seed, num_q, num_g, num_ids, args.num_cams)
  rng = np.random.default_rng(args.seed + 1)
  q = rng.standard_normal((num_q, args.dim), np.float32)
  g = rng.standard_normal((num_g, args.dim), np.float32)
  num = num_q + num_g
  params = dict(k1=args.k1, k2=args.k2, lambda_value=args.lambda_value)
  tile = args.row_tile or rerank_sparse.default_row_tile()

  rate_before = matmul_rate(tile, args.dim, num)
  timings = {}
  start = time.perf_counter()
  result = rerank_sparse.evaluate_sparse_rerank(
      q, g, *labels, metric=args.metric, row_tile=args.row_tile,
      timings=timings, **params)
  seconds = time.perf_counter() - start
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  rate_after = matmul_rate(tile, args.dim, num)
  rate = max(rate_before, rate_after)
  flops = 2.0 * num * num * args.dim + 2.0 * num_q * num_g * args.dim

  check = None
  if args.check:
    n_q = max(1, args.check_size * num_q // num)
    n_g = args.check_size - n_q
    sub = (labels[0][:n_q], labels[1][:n_g], labels[2][:n_q],
           labels[3][:n_g])
    dense = metrics.evaluate_ranking(
        rerank.k_reciprocal_rerank_features(q[:n_q], g[:n_g],
                                            metric=args.metric, **params),
        *sub)
    sparse = rerank_sparse.evaluate_sparse_rerank(
        q[:n_q], g[:n_g], *sub, metric=args.metric, **params)
    check = dict(items=args.check_size, max_abs_diff=float(max(
        np.abs(dense.cmc - sparse.cmc).max(), abs(dense.mAP - sparse.mAP),
        abs(dense.mINP - sparse.mINP))))

  report = {
      "problem": {"num_query": num_q, "num_gallery": num_g,
                  "num_ids": num_ids, "dim": args.dim, "metric": args.metric,
                  **params, "row_tile": tile},
      "seconds": seconds,
      "step_seconds": timings,
      "peak_rss_gib": peak_rss / 2**30,
      "features_gib": (q.nbytes + g.nbytes) / 2**30,
      "dense_estimate_gib": rerank.memory_bytes(num) / 2**30,
      "matmul_gflops_before": rate_before / 1e9,
      "matmul_gflops_after": rate_after / 1e9,
      "flop_floor_seconds": flops / rate,
      "seconds_over_floor": seconds / (flops / rate),
      "check_dense_vs_sparse": check,
      "metrics": {k: v for k, v in result.to_dict().items() if k != "cmc"},
      "jax_version": jax.__version__,
      "backend": jax.default_backend(),
      "device": str(jax.devices()[0]),
      "cpu_count": os.cpu_count(),
      "load_avg_1m_start": load_start,
      "load_avg_1m": os.getloadavg()[0],
  }
  print(json.dumps(report))


if __name__ == "__main__":
  main()
