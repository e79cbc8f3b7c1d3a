"""Streams a small evaluation on N CPU devices; prints JSON.

Used by test_streaming.py in a subprocess, because the CPU device count must
be set before JAX starts: ``python -m tests.evaluate.run_streaming --devices 2``.
Every streamed result is compared, in this process, with
``evaluate_ranking`` on the full distance matrix.
"""

import argparse
import json

import jax

parser = argparse.ArgumentParser()
parser.add_argument("--devices", type=int, default=1)
args = parser.parse_args()
jax.config.update("jax_num_cpu_devices", args.devices)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from reidjax.evaluate import distance, metrics, ranking, streaming  # noqa: E402
from reidjax import sharding  # noqa: E402


def pooled_pair_distance(a, b):
  """Squared Euclidean distance of masked sum-pooled sequences (exact here)."""
  def pool(x):
    return (x["sequence"] * x["mask"][..., None].astype(jnp.float32)).sum(1)
  return distance.prepared_distance(pool(a), pool(b), metric="euclidean")


def diff(a, b):
  return float(max(np.abs(a.cmc - b.cmc).max(), abs(a.mAP - b.mAP),
                   abs(a.mINP - b.mINP)))


def main():
  assert jax.device_count() == args.devices, jax.devices()
  mesh = sharding.make_data_mesh()
  rng = np.random.default_rng(0)
  num_q, num_g, dim, seq = 45, 130, 6, 3
  q_pids, g_pids = rng.integers(1, 12, num_q), rng.integers(0, 12, num_g)
  q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
  # Small integers: every distance is exact, whatever the tiling.
  q_seq = rng.integers(-2, 3, (num_q, seq, dim)).astype(np.float32)
  g_seq = rng.integers(-2, 3, (num_g, seq, dim)).astype(np.float32)
  q_items = {"sequence": q_seq, "mask": np.ones((num_q, seq), bool)}
  g_items = {"sequence": g_seq, "mask": np.ones((num_g, seq), bool)}
  q_feat, g_feat = q_seq.sum(1), g_seq.sum(1)
  labels = (q_pids, g_pids, q_cams, g_cams)
  dist = np.asarray(distance.pairwise_distance(q_feat, g_feat))
  out = {"devices": jax.device_count()}
  for protocol in ("market1501",):
    ref = metrics.evaluate_ranking(dist, *labels, protocol=protocol,
                                   num_repeats=3, max_rank=20)
    got = streaming.evaluate_features(q_feat, g_feat, *labels, mesh=mesh,
                                      query_tile=16, protocol=protocol,
                                      num_repeats=3, max_rank=20)
    out[f"features_{protocol}"] = diff(got, ref)
    out[f"mAP_{protocol}"] = got.mAP
  # The pair function is the embedding distance of the summed sequences.
  pair_dist = ranking.pairwise_distance_tiled(
      pooled_pair_distance, q_items, g_items, query_tile=16, gallery_tile=32,
      mesh=mesh)
  out["pair_matrix"] = float(np.abs(pair_dist - dist).max())
  ref = metrics.evaluate_ranking(dist, *labels, max_rank=20)
  got = ranking.evaluate_pair_model(
      pooled_pair_distance, q_items, g_items, *labels, query_tile=16,
      gallery_tile=32, mesh=mesh, max_rank=20)
  out["pair"] = diff(got, ref)
  got = ranking.evaluate_two_stage(
      pooled_pair_distance, q_items, g_items, q_feat, g_feat, *labels,
      top_k=num_g, query_tile=16, mesh=mesh, max_rank=20)
  out["two_stage_full"] = diff(got, ref)
  out["mAP_pair"] = ref.mAP
  # CUHK03 protocol, two-stage with K = G: the full pairwise ranking.
  ref = metrics.evaluate_ranking(dist, *labels, max_rank=20, protocol="cuhk03",
                                 num_repeats=3, seed=2)
  got = ranking.evaluate_two_stage(
      pooled_pair_distance, q_items, g_items, q_feat, g_feat, *labels,
      top_k=num_g, query_tile=16, mesh=mesh, max_rank=20, protocol="cuhk03",
      num_repeats=3, seed=2, pair_batch=3, transfer_chunk=5)
  out["two_stage_cuhk03"] = diff(got, ref)
  # "sum" with K < G and another first stage: a NumPy ranking by d1 + d2.
  q_first = rng.integers(-2, 3, (num_q, 4)).astype(np.float32)
  g_first = rng.integers(-2, 3, (num_g, 4)).astype(np.float32)
  d1 = ((q_first[:, None] - g_first[None]) ** 2).sum(-1)
  positions = np.empty((num_q, num_g))
  for q in range(num_q):
    order = np.argsort(d1[q], kind="stable")
    top, rest = order[:20], order[20:]
    top = top[np.lexsort((top, d1[q, top] + dist[q, top]))]
    positions[q, np.concatenate([top, rest])] = np.arange(num_g)
  ref = metrics.evaluate_ranking(positions, *labels, max_rank=20)
  got = ranking.evaluate_two_stage(
      pooled_pair_distance, q_items, g_items, q_first, g_first, *labels,
      top_k=20, combine="sum", query_tile=16, mesh=mesh, max_rank=20,
      pair_batch=3, transfer_chunk=5)
  out["two_stage_sum"] = diff(got, ref)
  print(json.dumps(out))


main()
