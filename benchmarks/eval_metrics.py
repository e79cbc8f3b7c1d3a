r"""Benchmarks the jitted evaluator against NumPy references, in one run.

A random Market-1501-sized problem: 3368 queries x 15913 gallery items, 750
test ids (gallery counts per id drawn with mean ~14 and a long tail) plus pid 0
distractors, 6 cameras. Distances are squared Euclidean between random
features (id centre + camera bias + noise), so rankings have realistic
structure. The JAX path is timed after one warm-up (compile) call; all paths
must agree to 1e-6. Prints one JSON object to stdout.

Modes:
  market1501 (default): ``evaluate_ranking`` (method "auto", plus "count" and
    "head" separately) vs the per-query loop and the vectorised NumPy
    reference.
  worst_case: the same labels with uniform random distances (every true
    match deep in its list: the most counting work). ``evaluate_ranking`` vs
    the NumPy loop and vectorised references and ``cython_lower_bound``: the
    ``np.argsort(distmat, axis=1)`` that torchreid's Cython ``evaluate_cy``
    runs before its loop over queries (torchreid is not installed here, so
    its Cython time is bounded below by this part of it). Goal: jax <= 1/10
    of the Cython time, i.e. ``jax_over_cython_lower_bound`` <= 0.1 is
    sufficient.
  cuhk03: ``evaluate_ranking(protocol="cuhk03")`` (10 repeats) vs the
    per-query ``evaluate_cuhk03_loop``.
  two_stage: ``ranking.evaluate_two_stage`` from features (first stage:
    squared Euclidean of the features; pair model: a Chamfer distance between
    4-frame sequences, re-ranking the top K) vs a per-query NumPy loop that
    builds the final list by argsort and scores it like the loop reference
    (given the first-stage matrix, so the JAX path does more work).

  python benchmarks/eval_metrics.py [--mode market1501|cuhk03|two_stage]
      [--repeats 3] [--query_tile 64] [--top_k 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

import jax.numpy as jnp

from reidjax.evaluate import distance, metrics, numpy_reference, ranking


def make_problem(seed: int, num_query: int, num_gallery: int, num_ids: int,
                 num_cams: int, dim: int = 128, return_features: bool = False):
  """Random labels and a (num_query, num_gallery) float32 distance matrix
  (and the query / gallery features with ``return_features``)."""
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

  q_feat, g_feat = features(q_pids, q_camids), features(g_pids, g_camids)
  distmat = np.asarray(distance.pairwise_distance(q_feat, g_feat))
  problem = (distmat, q_pids, g_pids, q_camids, g_camids)
  return (problem, (q_feat, g_feat)) if return_features else problem


def chamfer_pair_distance(a, b):
  """Pair model stand-in: mean over a's frames of the squared distance to the
  nearest frame of b. (tq, S, D), (tg, S, D) -> (tq, tg)."""
  x, y = a["sequence"], b["sequence"]
  d = (jnp.sum(x * x, -1)[:, None, :, None] + jnp.sum(y * y, -1)[None, :, None]
       - 2 * jnp.einsum("qsd,gtd->qgst", x, y))
  return jnp.mean(jnp.min(d, axis=3), axis=2)


def chamfer_numpy(x, y):
  """(S, D), (K, S, D) -> (K,), float32 like the JAX version."""
  d = (np.sum(x * x, -1)[None, :, None] + np.sum(y * y, -1)[:, None, :]
       - 2 * np.einsum("sd,ktd->kst", x, y))
  return np.mean(np.min(d, axis=2), axis=1)


def two_stage_loop(first, q_seq, g_seq, q_pids, g_pids, q_camids, g_camids,
                   top_k, max_rank):
  """Per query: argsort, re-rank the top K by pair distance, score the list."""
  all_cmc, all_ap, all_inp, skipped = [], [], [], 0
  for q in range(first.shape[0]):
    order = np.argsort(first[q], kind="stable")
    top, rest = order[:top_k], order[top_k:]
    pair = chamfer_numpy(q_seq[q], g_seq[top])
    top = top[np.lexsort((top, pair))]  # pair distance, ties by index
    order = np.concatenate([top, rest])
    keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
    raw = (g_pids[order][keep] == q_pids[q]).astype(np.int64)
    if not raw.any():
      skipped += 1
      continue
    cmc = np.minimum(raw.cumsum(), 1)
    curve = np.full(max_rank, cmc[-1], np.float64)
    curve[:min(max_rank, cmc.size)] = cmc[:max_rank]
    all_cmc.append(curve)
    ranks = np.flatnonzero(raw)
    all_ap.append(np.mean(np.arange(1, ranks.size + 1) / (ranks + 1.0)))
    all_inp.append(ranks.size / (ranks[-1] + 1.0))
  return metrics.RankingMetrics(
      np.mean(all_cmc, axis=0), float(np.mean(all_ap)), float(np.mean(all_inp)),
      len(all_ap), skipped)


def _max_diff(a: metrics.RankingMetrics, b: metrics.RankingMetrics) -> float:
  if (a.num_valid_queries, a.num_skipped_queries) != (
      b.num_valid_queries, b.num_skipped_queries):
    return float("inf")
  return float(max(np.abs(a.cmc - b.cmc).max(), abs(a.mAP - b.mAP),
                   abs(a.mINP - b.mINP)))


_CPU_SECONDS = {}  # Last call's process CPU time, by function name.


def _timed(fn, *args, **kwargs):
  start, cpu = time.perf_counter(), time.process_time()
  out = fn(*args, **kwargs)
  _CPU_SECONDS["last"] = time.process_time() - cpu
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
  parser.add_argument("--mode", default="market1501",
                      choices=("market1501", "worst_case", "cuhk03",
                               "two_stage"))
  parser.add_argument("--top_k", type=int, default=100,
                      help="two_stage: items re-ranked per query")
  args = parser.parse_args()
  load_start = os.getloadavg()[0]

  problem, (q_feat, g_feat) = make_problem(
      args.seed, args.num_query, args.num_gallery, args.num_ids,
      args.num_cams, return_features=True)
  distmat, q_pids, g_pids, q_camids, g_camids = problem
  if args.mode == "worst_case":
    distmat = np.random.default_rng(args.seed + 2).random(
        distmat.shape, np.float32)
    problem = (distmat, q_pids, g_pids, q_camids, g_camids)
  kwargs = dict(max_rank=args.max_rank)
  extra_seconds, diffs = {}, {}

  if args.mode == "two_stage":
    rng = np.random.default_rng(args.seed + 1)
    # Pair items: 4 noisy frames around each item's feature (32 dims).
    q_seq = (q_feat[:, None, :32] + 0.5 * rng.normal(
        size=(q_feat.shape[0], 4, 32))).astype(np.float32)
    g_seq = (g_feat[:, None, :32] + 0.5 * rng.normal(
        size=(g_feat.shape[0], 4, 32))).astype(np.float32)
    run_jax = lambda: ranking.evaluate_two_stage(
        chamfer_pair_distance, {"sequence": q_seq}, {"sequence": g_seq},
        q_feat, g_feat, q_pids, g_pids, q_camids, g_camids, top_k=args.top_k,
        query_tile=args.query_tile, pair_batch=64, **kwargs)
    run_ref = lambda: two_stage_loop(distmat, q_seq, g_seq, q_pids, g_pids,
                                     q_camids, g_camids, args.top_k,
                                     args.max_rank)
    run_vec = None
  elif args.mode == "cuhk03":
    run_jax = lambda: metrics.evaluate_ranking(
        *problem, query_tile=args.query_tile, protocol="cuhk03",
        num_repeats=10, seed=args.seed, **kwargs)
    run_ref = lambda: numpy_reference.evaluate_cuhk03_loop(
        *problem, num_repeats=10, seed=args.seed, **kwargs)
    run_vec = None
  else:  # market1501, worst_case
    run_jax = lambda: metrics.evaluate_ranking(
        *problem, query_tile=args.query_tile, **kwargs)
    run_ref = lambda: numpy_reference.evaluate_ranking_loop(*problem,
                                                            **kwargs)
    run_vec = lambda: numpy_reference.evaluate_ranking_vectorized_numpy(
        *problem, **kwargs)

  _, compile_s = _timed(run_jax)
  jax_runs, jax_cpu = [], []
  for _ in range(args.repeats):
    result, seconds = _timed(run_jax)
    jax_runs.append(seconds)
    jax_cpu.append(_CPU_SECONDS["last"])
  if args.mode == "worst_case":
    argsort_s = min(_timed(np.argsort, distmat, axis=1)[1]
                    for _ in range(args.repeats))
    extra_seconds["cython_lower_bound"] = argsort_s
  if args.mode in ("market1501", "worst_case"):
    for method in ("count", "head"):
      fn = lambda m=method: metrics.evaluate_ranking(
          *problem, query_tile=args.query_tile, method=m, **kwargs)
      fn()
      other, seconds = min((_timed(fn) for _ in range(args.repeats)),
                           key=lambda x: x[1])
      extra_seconds[f"jax_method_{method}"] = seconds
      diffs[f"jax_{method}_vs_loop"] = other
  loop, loop_s = _timed(run_ref)
  loop_cpu = _CPU_SECONDS["last"]
  vec, vec_s = _timed(run_vec) if run_vec else (None, None)
  vec_cpu = _CPU_SECONDS["last"] if run_vec else None

  jax_s = min(jax_runs)
  default_tile = (f"{metrics.default_query_tile()} (every row to the kernel: "
                  f"{metrics.default_query_tile(all_rows=True)})")
  diffs = {k: _max_diff(v, loop) for k, v in diffs.items()}
  diffs["jax_vs_loop"] = _max_diff(result, loop)
  if vec is not None:
    diffs["vectorized_vs_loop"] = _max_diff(vec, loop)
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
      "mode": args.mode,
      "seconds": {
          "jax": jax_s,
          "jax_runs": jax_runs,
          "jax_first_call_with_compile": compile_s,
          "numpy_loop": loop_s,
          **({"numpy_vectorized": vec_s} if vec_s else {}),
          **extra_seconds,
      },
      # Process CPU time (all threads): less sensitive to other jobs.
      "cpu_seconds": {
          "jax": min(jax_cpu),
          "numpy_loop": loop_cpu,
          **({"numpy_vectorized": vec_cpu} if vec_s else {}),
      },
      "speedup": {
          **({"jax_over_cython_lower_bound":
              jax_s / extra_seconds["cython_lower_bound"]}
             if "cython_lower_bound" in extra_seconds else {}),
          "jax_vs_numpy_loop": loop_s / jax_s,
          **({"jax_vs_numpy_vectorized": vec_s / jax_s} if vec_s else {}),
          "cpu_jax_vs_numpy_loop": loop_cpu / min(jax_cpu),
          **({"cpu_jax_vs_numpy_vectorized": vec_cpu / min(jax_cpu)}
             if vec_s else {}),
      },
      "max_abs_diff": diffs,
      "agree_1e-6": agree,
      "jax_version": jax.__version__,
      "device": str(jax.devices()[0]),
      "backend": jax.default_backend(),
      "cpu_count": os.cpu_count(),
      # Other jobs share the CPUs: compare ratios from one run, not absolutes.
      "load_avg_1m_start": load_start,
      "load_avg_1m": os.getloadavg()[0],
      "metrics": result.to_dict(),
  }
  report["metrics"]["cmc"] = [round(x, 6) for x in report["metrics"]["cmc"]]
  print(json.dumps(report))
  if not agree:
    sys.exit(1)


if __name__ == "__main__":
  main()
