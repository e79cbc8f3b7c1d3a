r"""Benchmarks DuATM's pair distance (Si et al. CVPR 2018, Eq. 2-5).

Market-sized feature sequences (S = 32 positions of an 8 x 4 DenseNet map,
D = 256) for a query tile against a gallery tile (default 256 x 1024). The
per-sequence work (``DualAttention.prepare``: Eq. 1 transform, intra
attention, Gram matrices) is timed separately; the figure of merit is
``pair_distance`` alone: pairs per second and its matmul FLOP rate as a
fraction of the machine's float32 matmul rate, measured in the same run
with one large ``jnp.dot`` (same precision), the two timed alternately so
that a change in machine load hits both. FLOPs are the matmul FLOPs
``pair_distance`` executes (``pair_distance_flops``: the [q; x_bar] x x_b^T
GEMM and the weights x Gram product, both directions); the softmax and
reductions are extra work not credited. Prints one JSON object.

  python benchmarks/pair_distance.py [--num_a 256] [--num_b 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from reidjax.layers import dual_attention


def _timings(fn, *args, repeats: int) -> list[float]:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return times


def _unit_sequences(key, num, length, dim):
  x = jax.random.normal(key, (num, length, dim), jnp.float32)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_a", type=int, default=256)
  parser.add_argument("--num_b", type=int, default=1024)
  parser.add_argument("--length", type=int, default=32)
  parser.add_argument("--dim", type=int, default=256)
  parser.add_argument("--block_a", type=int,
                      default=dual_attention.BLOCK_A, help="0: no blocks")
  parser.add_argument("--block_b", type=int,
                      default=dual_attention.BLOCK_B, help="0: no blocks")
  parser.add_argument("--matmul_size", type=int, default=4096)
  parser.add_argument("--precision", default="highest")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  load_before = os.getloadavg()
  key_a, key_b, key_init, key_m1, key_m2 = jax.random.split(
      jax.random.key(args.seed), 5)
  x_a = _unit_sequences(key_a, args.num_a, args.length, args.dim)
  x_b = _unit_sequences(key_b, args.num_b, args.length, args.dim)
  model = dual_attention.DualAttention(
      precision=args.precision, block_a=args.block_a or None,
      block_b=args.block_b or None)
  variables = jax.jit(model.init)(key_init, x_a[:2])
  prepare = jax.jit(lambda x: model.apply(variables, x, method="prepare"))
  items_a = jax.block_until_ready(prepare(x_a))
  prepare_times = _timings(prepare, x_b, repeats=args.repeats)
  items_b = prepare(x_b)

  pair = jax.jit(lambda a, b: model.apply(variables, a, b,
                                          method="pair_distance"))
  start = time.perf_counter()
  distances = jax.block_until_ready(pair(items_a, items_b))
  compile_and_first = time.perf_counter() - start

  # Sanity: the tile agrees with separate single pairs (a few of them).
  single = jax.jit(lambda a, b: dual_attention.pair_distance(a, b))
  rng = np.random.default_rng(args.seed)
  check = []
  for a, b in zip(rng.integers(0, args.num_a, 4), rng.integers(0, args.num_b, 4)):
    pick = lambda items, k: jax.tree.map(lambda t: t[k:k + 1], items)
    check.append(abs(float(single(pick(items_a, a), pick(items_b, b))[0, 0])
                     - float(distances[a, b])))

  n = args.matmul_size
  lhs = jax.random.normal(key_m1, (n, n), jnp.float32)
  rhs = jax.random.normal(key_m2, (n, n), jnp.float32)
  matmul = jax.jit(lambda u, v: jnp.dot(u, v, precision=args.precision))
  jax.block_until_ready(matmul(lhs, rhs))

  pair_times, matmul_times = [], []
  for _ in range(args.repeats):  # Alternate, so load changes hit both.
    matmul_times += _timings(matmul, lhs, rhs, repeats=1)
    pair_times += _timings(pair, items_a, items_b, repeats=1)
  matmul_times += _timings(matmul, lhs, rhs, repeats=1)

  pair_seconds = min(pair_times)
  matmul_rate = 2 * n ** 3 / min(matmul_times)
  flops = dual_attention.pair_distance_flops(
      args.num_a, args.num_b, args.length, args.length, args.dim)
  # The textbook count for reference: per direction, logits 2 S S' D,
  # weighted sum x_hat 2 S S' D, distances 3 S D (sub, square, sum).
  s, d = args.length, args.dim
  textbook = args.num_a * args.num_b * 2 * (4 * s * s * d + 3 * s * d)
  result = {
      "benchmark": "duatm_pair_distance",
      "device": str(jax.devices()[0].device_kind),
      "platform": jax.default_backend(),
      "cpu_count": os.cpu_count(),
      "machine": platform.machine(),
      "jax": jax.__version__,
      "tile": [args.num_a, args.num_b],
      "sequence_length": s,
      "dim": d,
      "blocks": [args.block_a, args.block_b],
      "precision": args.precision,
      "pair_seconds_best": pair_seconds,
      "pair_seconds_all": pair_times,
      "pairs_per_second": args.num_a * args.num_b / pair_seconds,
      "pair_matmul_flops": flops,
      "pair_gflops_per_second": flops / pair_seconds / 1e9,
      "textbook_flops": textbook,
      "matmul_size": n,
      "matmul_gflops_per_second": matmul_rate / 1e9,
      "matmul_seconds_all": matmul_times,
      "fraction_of_matmul_rate": flops / pair_seconds / matmul_rate,
      "prepare_sequences_per_second": args.num_b / min(prepare_times),
      "compile_and_first_call_seconds": compile_and_first,
      "max_abs_diff_tile_vs_single_pairs": max(check),
      "load_average_before": load_before,
      "load_average_after": os.getloadavg(),
  }
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
