"""Pair-model ranking: tiled pairwise distances and two-stage re-ranking."""

import jax.numpy as jnp
import numpy as np
import pytest

from reidjax.evaluate import distance, metrics, numpy_reference, ranking
from tests.evaluate.test_metrics import assert_same


def summed(items):
  """Masked sum over the sequence axis: (N, S, D) -> (N, D)."""
  return (items["sequence"] * items["mask"][..., None]).sum(1)


def euclidean_pair(a, b):
  return distance.prepared_distance(summed(a), summed(b), metric="euclidean")


def l1_pair(a, b):
  """A genuinely different pair distance: L1 of the summed sequences."""
  return jnp.abs(summed(a)[:, None, :] - summed(b)[None, :, :]).sum(-1)


def make_items(seed, num_q=30, num_g=90, seq=3, dim=5):
  rng = np.random.default_rng(seed)
  def items(n):
    return {"sequence": rng.integers(-2, 3, (n, seq, dim)).astype(np.float32),
            "mask": (rng.random((n, seq)) < 0.8).astype(np.float32)}
  labels = (rng.integers(1, 9, num_q), rng.integers(0, 9, num_g),
            rng.integers(0, 3, num_q), rng.integers(0, 3, num_g))
  return items(num_q), items(num_g), labels


def test_euclidean_pair_fn_reproduces_embedding_path():
  q_items, g_items, labels = make_items(0)
  # Integer features: exact distances, many ties, same on every path.
  dist = np.asarray(distance.pairwise_distance(summed(q_items),
                                               summed(g_items)))
  tiled = ranking.pairwise_distance_tiled(euclidean_pair, q_items, g_items,
                                          query_tile=7, gallery_tile=16)
  np.testing.assert_array_equal(tiled, dist)
  expected = numpy_reference.evaluate_ranking_loop(dist, *labels)
  result = ranking.evaluate_pair_model(euclidean_pair, q_items, g_items,
                                       *labels, query_tile=8, gallery_tile=16)
  assert_same(result, expected)


def test_params_are_passed_and_reuse_the_step():
  q_items, g_items, labels = make_items(1)

  def scaled(params, a, b):
    return params["scale"] * l1_pair(a, b) + params["shift"]

  base = ranking.evaluate_pair_model(l1_pair, q_items, g_items, *labels,
                                     query_tile=8, gallery_tile=32)
  for scale in (2.0, 0.5):  # Order-preserving: same metrics.
    result = ranking.evaluate_pair_model(
        scaled, q_items, g_items, *labels, query_tile=8, gallery_tile=32,
        params={"scale": jnp.float32(scale), "shift": jnp.float32(1.0)})
    assert_same(result, base)
  assert ranking.pair_local_fn.cache_info().hits >= 1
  flipped = ranking.evaluate_pair_model(
      scaled, q_items, g_items, *labels, query_tile=8, gallery_tile=32,
      params={"scale": jnp.float32(-1.0), "shift": jnp.float32(0.0)})
  # The params were used: the NumPy ranking of the negated L1 distances.
  l1 = np.abs(summed(q_items)[:, None] - summed(g_items)[None]).sum(-1)
  assert_same(flipped, numpy_reference.evaluate_ranking_loop(-l1, *labels))


def test_two_stage_with_k_at_least_g_is_full_pairwise():
  q_items, g_items, labels = make_items(2)
  full = ranking.evaluate_pair_model(l1_pair, q_items, g_items, *labels,
                                     query_tile=8, gallery_tile=32)
  # First stage: a different (squared Euclidean) ranking of other features.
  rng = np.random.default_rng(2)
  q_feat = rng.normal(size=(30, 4)).astype(np.float32)
  g_feat = rng.normal(size=(90, 4)).astype(np.float32)
  for top_k in (90, 500):
    result = ranking.evaluate_two_stage(l1_pair, q_items, g_items, q_feat,
                                        g_feat, *labels, top_k=top_k,
                                        query_tile=8)
    assert_same(result, full)
  first = metrics.evaluate_ranking(
      np.asarray(distance.pairwise_distance(q_feat, g_feat)), *labels)
  assert abs(first.mAP - full.mAP) > 1e-3  # The stages do differ.


# One query (pid 1, camera 0); gallery (index: pid, cam, first-stage d1,
# pair distance p):
#   0: pid 2, cam 1, d1 .0625,   p 0.9
#   1: pid 1, cam 1, d1 .25,     p 0.1   match
#   2: pid 3, cam 1, d1 .5625,   p 0.05
#   3: pid 1, cam 0, d1 .015625, p 0.0   removed (same pid and camera)
#   4: pid 1, cam 2, d1 1.5625,  p 0.01  match
#   5: pid 4, cam 2, d1 1.0,     p 0.02
# First stage: 3, 0, 1, 2, 5, 4.
# K = 3: top {3, 0, 1} re-ordered by p -> 3, 1, 0; then 2, 5, 4 unchanged.
#   Valid list 1, 0, 2, 5, 4: match ranks 0, 4 -> AP (1 + 2/5) / 2 = 0.7,
#   INP 2/5; item 4 (p 0.01) and 2 (p 0.05) stay behind though p is small.
# Full pairwise: 3, 4, 5, 2, 1, 0 -> valid 4, 5, 2, 1, 0: ranks 0, 3 ->
#   AP (1 + 2/4) / 2 = 0.75, INP 0.5.
# First stage only: valid 0, 1, 2, 5, 4: ranks 1, 4 -> AP 0.45, INP 0.4.
HAND = dict(
    g_pids=np.array([2, 1, 3, 1, 1, 4]), g_cams=np.array([1, 1, 1, 0, 2, 2]),
    g_feat=np.array([[0.25], [0.5], [0.75], [0.125], [1.25], [1.0]],
                    np.float32),
    pair=np.array([0.9, 0.1, 0.05, 0.0, 0.01, 0.02], np.float32))


def given_pair(a, b):
  return jnp.broadcast_to(b["p"][None, :], (a["p"].shape[0],
                                            b["p"].shape[0]))


@pytest.mark.parametrize("top_k, ap, inp, cmc1", [
    (3, 0.7, 0.4, 1.0), (6, 0.75, 0.5, 1.0), (1, 0.45, 0.4, 0.0)])
def test_two_stage_hand_computed(top_k, ap, inp, cmc1):
  # top_k 1: item 3 alone is re-ranked (and removed): the first stage.
  result = ranking.evaluate_two_stage(
      given_pair, {"p": np.zeros(1, np.float32)}, {"p": HAND["pair"]},
      np.zeros((1, 1), np.float32), HAND["g_feat"], [1], HAND["g_pids"], [0],
      HAND["g_cams"], top_k=top_k, max_rank=5)
  assert result.mAP == pytest.approx(ap, abs=1e-7)
  assert result.mINP == pytest.approx(inp, abs=1e-7)
  assert result.cmc[0] == cmc1 and result.cmc[4] == 1.0


def test_bad_items():
  q_items, g_items, labels = make_items(3)
  bad = dict(g_items, mask=g_items["mask"][:5])
  with pytest.raises(ValueError, match="same non-zero leading"):
    ranking.evaluate_pair_model(l1_pair, q_items, bad, *labels)
  with pytest.raises(ValueError, match="top_k"):
    ranking.evaluate_two_stage(l1_pair, q_items, g_items,
                               np.zeros((30, 2)), np.zeros((90, 2)), *labels,
                               top_k=0)
