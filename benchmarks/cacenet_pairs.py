r"""Benchmarks CACE-Net's conditional pair distance and its two-stage ranking.

Yu et al. 2020, Sec. 3.5: rank the gallery by the individual features,
re-rank each query's top K by the conditional features. Market size: the
384 x 128 input gives a 24 x 8 x 2048 ResNet-50 stage-4 map (N = 192 nodes
an image, D = 2048), E = 2048 (``configs/cacenet.py:market1501``); the
model's variables are the full-size ones (initialised at random; the
backbone is not run: items are random non-negative maps, prepared by the
model's own ``prepare``).

1. Pairs per second of ``CACENet.pair_distance`` for one query against K
   candidates (the two-stage shape, default K = 100), and its matmul FLOP
   rate as a fraction of the machine's float32 matmul rate measured in the
   same run with one large ``jnp.dot``, the two timed alternately so that a
   change in load hits both. FLOPs per pair: Eq. 3's S'_uv (2 N^2 D), the
   two pooled propagations (8 N D), theta on two vectors (2 (2 D + 2 D^2):
   ``GraphConvolution`` on a one-node graph) and the 1x1 conv (2 x 2 D E),
   exactly the dot_generals of the jaxpr (``tests/models/
   test_cacenet.py`` counts them); normalisation and reductions are extra.
2. The two-stage evaluation of a Market-sized split (3,368 queries x 15,913
   gallery items, K = 100): the gallery of Market-sized items does not fit
   in this machine's memory (15,913 x 1.6 MiB = 26 GiB), so
   ``ranking.evaluate_two_stage`` runs on a subsample (``--sub_queries``
   queries against ``--sub_gallery`` items, default 16 x 1,024, same K) and
   its time per query is extrapolated linearly to 3,368 queries (the second
   stage is Q x K pairs; the candidates are gathered per query); the first
   stage at full size (3,368 x 15,913 individual features, E = 2048) is
   timed separately with ``ranking.first_stage_step`` and added. Both parts
   are printed.

  python benchmarks/cacenet_pairs.py [--top_k 100] [--repeats 3]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import cacenet as cacenet_config  # noqa: E402  (the repository's configs)
from reidjax import models  # noqa: E402
from reidjax.evaluate import ranking, streaming  # noqa: E402
from reidjax import sharding  # noqa: E402
# The timing loop of the DuATM pair benchmark (this folder is on sys.path).
from pair_distance import _timings  # noqa: E402  pylint: disable=g-import-not-at-top


def pair_flops(n: int, d: int, e: int) -> int:
  """Matmul FLOPs of one CACE-Net conditional pair (module doc)."""
  return 2 * n * n * d + 4 * 2 * n * d + 2 * (2 * d + 2 * d * d) + 2 * (2 * d * e)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--height", type=int, default=24, help="map height (384 / 16)")
  parser.add_argument("--width", type=int, default=8, help="map width (128 / 16)")
  parser.add_argument("--top_k", type=int, default=100)
  parser.add_argument("--num_query", type=int, default=3368)
  parser.add_argument("--num_gallery", type=int, default=15913)
  parser.add_argument("--sub_queries", type=int, default=16)
  parser.add_argument("--sub_gallery", type=int, default=1024)
  parser.add_argument("--matmul_size", type=int, default=2048)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  load_before = os.getloadavg()

  config = cacenet_config.get_config("market1501").model
  model = models.build_model(config, num_classes=751)
  # Parameter shapes do not depend on the image size: initialise on a small one.
  variables = jax.jit(model.init)(jax.random.PRNGKey(args.seed),
                                  {"images": jnp.zeros((1, 64, 32, 3))})
  d = model.backbone.stage_features[-1]
  e, n, k = config.embed_dim, args.height * args.width, args.top_k
  rng = np.random.default_rng(args.seed)
  prepare = jax.jit(lambda v, f: model.apply(v, f, method="prepare"))

  def items(num):
    maps = np.abs(rng.normal(size=(num, args.height, args.width, d))).astype(np.float32)
    return jax.tree.map(np.asarray, prepare(variables, {"map": jnp.asarray(maps)}))

  pair = jax.jit(lambda v, a, b: model.apply(v, a, b, method="pair_distance"))
  query, candidates = items(1), items(k)
  start = time.perf_counter()
  jax.block_until_ready(pair(variables, query, candidates))
  compile_and_first = time.perf_counter() - start

  size = args.matmul_size
  lhs = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
  rhs = jax.random.normal(jax.random.PRNGKey(2), (size, size), jnp.float32)
  matmul = jax.jit(lambda u, v: jnp.dot(u, v, precision="highest"))
  jax.block_until_ready(matmul(lhs, rhs))
  pair_times, matmul_times = [], []
  for _ in range(args.repeats):  # Alternate, so load changes hit both.
    matmul_times += _timings(matmul, lhs, rhs, repeats=1)
    pair_times += _timings(pair, variables, query, candidates, repeats=1)
  matmul_times += _timings(matmul, lhs, rhs, repeats=1)
  pair_seconds = min(pair_times)
  matmul_rate = 2 * size ** 3 / min(matmul_times)
  flops = k * pair_flops(n, d, e)

  # Two-stage on a subsample, extrapolated in the number of queries.
  mesh = sharding.make_data_mesh()
  sub_q, sub_g = args.sub_queries, args.sub_gallery
  query_items, gallery_items = items(sub_q), items(sub_g)
  pids = lambda num: rng.integers(0, 50, num)
  labels = (pids(sub_q), pids(sub_g), np.zeros(sub_q, np.int64), np.ones(sub_g, np.int64))
  pair_fn = lambda v, a, b: model.apply(v, a, b, method="pair_distance")

  def two_stage():
    stats = {}
    ranking.evaluate_two_stage(
        pair_fn, query_items, gallery_items, query_items["global"], gallery_items["global"],
        *labels, top_k=k, combine="sum", metric="cosine", mesh=mesh, params=variables,
        stats=stats)
    return stats

  two_stage()  # compile
  start = time.perf_counter()
  stats = two_stage()
  sub_seconds = time.perf_counter() - start

  # The first stage at full size: Q x G cosine distances of E-dim features.
  q_features = rng.normal(size=(args.num_query, e)).astype(np.float32)
  g_features = rng.normal(size=(args.num_gallery, e)).astype(np.float32)
  g_prep, q_prep = streaming.prepare_pair(q_features, g_features, "cosine", False, 1e-12, mesh)
  first = ranking.first_stage_step("cosine", k, mesh)
  tile = 256
  if args.num_query < tile:
    raise SystemExit(f"--num_query must be at least {tile} (one first-stage tile), got "
                     f"{args.num_query}.")
  rows = lambda lo: jax.tree.map(lambda x: streaming.put(x[lo:lo + tile], mesh, PartitionSpec(sharding.DATA_AXIS)), q_prep)
  jax.block_until_ready(first(rows(0), g_prep))
  start = time.perf_counter()
  for lo in range(0, args.num_query - tile + 1, tile):
    jax.block_until_ready(first(rows(lo), g_prep))
  full_tiles = (args.num_query // tile)
  first_stage_seconds = (time.perf_counter() - start) * args.num_query / (full_tiles * tile)

  per_query = sub_seconds / sub_q
  result = {
      "benchmark": "cacenet_pairs",
      "device": str(jax.devices()[0].device_kind),
      "platform": jax.default_backend(),
      "cpu_count": os.cpu_count(),
      "machine": platform.machine(),
      "jax": jax.__version__,
      "map": [args.height, args.width, d],
      "nodes_per_image": n,
      "embed_dim": e,
      "item_bytes": ranking.item_bytes(query_items),
      "top_k": k,
      "pair_seconds_best": pair_seconds,
      "pair_seconds_all": pair_times,
      "pairs_per_second": k / pair_seconds,
      "pair_matmul_flops_per_pair": pair_flops(n, d, e),
      "pair_gflops_per_second": flops / pair_seconds / 1e9,
      "matmul_size": size,
      "matmul_gflops_per_second": matmul_rate / 1e9,
      "matmul_seconds_all": matmul_times,
      "fraction_of_matmul_rate": flops / pair_seconds / matmul_rate,
      "compile_and_first_call_seconds": compile_and_first,
      "two_stage_subsample": {"queries": sub_q, "gallery": sub_g, "seconds": sub_seconds,
                              "seconds_per_query": per_query,
                              "items_sent": stats.get("items_sent")},
      "first_stage_full_seconds": first_stage_seconds,
      "two_stage_market_seconds_extrapolated": first_stage_seconds + per_query * args.num_query,
      "market_split": [args.num_query, args.num_gallery],
      "load_average_before": load_before,
      "load_average_after": os.getloadavg(),
  }
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
