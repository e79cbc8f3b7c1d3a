"""Pair-model ranking: tiled pairwise distances and two-stage re-ranking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reidjax.evaluate import distance, metrics, numpy_reference, ranking
from reidjax import sharding
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

  traces = []

  def scaled(params, a, b):
    traces.append(jax.tree.map(np.shape, (a, b)))  # Runs once per trace.
    return params["scale"] * l1_pair(a, b) + params["shift"]

  base = ranking.evaluate_pair_model(l1_pair, q_items, g_items, *labels,
                                     query_tile=8, gallery_tile=32)
  for scale in (2.0, 0.5):  # Order-preserving: same metrics.
    result = ranking.evaluate_pair_model(
        scaled, q_items, g_items, *labels, query_tile=8, gallery_tile=32,
        params={"scale": jnp.float32(scale), "shift": jnp.float32(1.0)})
    assert_same(result, base)
  # Traced once: every query tile, gallery tile (32, 32, 26 padded to 32)
  # and the new params values reuse one compiled block step.
  assert traces == [({"sequence": (8, 3, 5), "mask": (8, 3)},
                     {"sequence": (32, 3, 5), "mask": (32, 3)})]
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


# combine="sum" ranks the top K by d1 + p: 3 .015625, 1 .35, 2 .6125,
#   0 .9625, 5 1.02, 4 1.5725. K = 3: 3, 1, 0 as with "replace". K = 6:
#   valid 1, 2, 0, 5, 4: match ranks 0, 4 -> AP (1 + 2/5) / 2 = 0.7, INP 0.4.
@pytest.mark.parametrize("top_k, combine, ap, inp, cmc1", [
    (3, "replace", 0.7, 0.4, 1.0), (6, "replace", 0.75, 0.5, 1.0),
    (1, "replace", 0.45, 0.4, 0.0), (3, "sum", 0.7, 0.4, 1.0),
    (6, "sum", 0.7, 0.4, 1.0)])
def test_two_stage_hand_computed(top_k, combine, ap, inp, cmc1):
  # top_k 1: item 3 alone is re-ranked (and removed): the first stage.
  result = ranking.evaluate_two_stage(
      given_pair, {"p": np.zeros(1, np.float32)}, {"p": HAND["pair"]},
      np.zeros((1, 1), np.float32), HAND["g_feat"], [1], HAND["g_pids"], [0],
      HAND["g_cams"], top_k=top_k, combine=combine, max_rank=5)
  assert result.mAP == pytest.approx(ap, abs=1e-7)
  assert result.mINP == pytest.approx(inp, abs=1e-7)
  assert result.cmc[0] == cmc1 and result.cmc[4] == 1.0


def two_stage_positions(d1, d2, top_k, combine):
  """NumPy: each item's position in the final two-stage list (Q, G)."""
  num_q, num_g = d1.shape
  out = np.empty((num_q, num_g))
  for q in range(num_q):
    order = np.argsort(d1[q], kind="stable")
    top, rest = order[:top_k], order[top_k:]
    score = d2[q, top] + (d1[q, top] if combine == "sum" else 0.0)
    top = top[np.lexsort((top, score))]  # score, ties by gallery index
    out[q, np.concatenate([top, rest])] = np.arange(num_g)
  return out


def integer_stages(seed):
  """Items, labels, first-stage features and both stages' exact distances."""
  q_items, g_items, labels = make_items(seed)
  rng = np.random.default_rng(seed + 100)
  q_feat = rng.integers(-2, 3, (30, 4)).astype(np.float32)
  g_feat = rng.integers(-2, 3, (90, 4)).astype(np.float32)
  d1 = ((q_feat[:, None].astype(np.float64) - g_feat[None]) ** 2).sum(-1)
  d2 = np.abs(summed(q_items)[:, None] - summed(g_items)[None]).sum(-1)
  return q_items, g_items, labels, q_feat, g_feat, d1, d2


@pytest.mark.parametrize("top_k, combine", [
    (90, "sum"), (17, "sum"), (17, "replace"), (1, "sum")])
def test_two_stage_equals_numpy_ranking(top_k, combine):
  # Integer features and items: d1, d2 and d1 + d2 are exact (many ties).
  q_items, g_items, labels, q_feat, g_feat, d1, d2 = integer_stages(4)
  expected = numpy_reference.evaluate_ranking_loop(
      two_stage_positions(d1, d2, top_k, combine), *labels)
  stats = {}
  # Several gallery-item transfers per group: 2 queries, chunks of 7 items.
  result = ranking.evaluate_two_stage(
      l1_pair, q_items, g_items, q_feat, g_feat, *labels, top_k=top_k,
      combine=combine, query_tile=8, pair_batch=2, transfer_chunk=7,
      stats=stats)
  assert_same(result, expected)
  # Candidates shared within a group of queries are sent once; never more
  # than K items per query (the 2 padding rows of the last tile send none).
  assert np.all(numpy_reference_num_matches(labels) > 0)
  assert 0 < stats["items_sent"] <= 30 * top_k
  if combine == "sum" and 1 < top_k < 90:
    replaced = numpy_reference.evaluate_ranking_loop(
        two_stage_positions(d1, d2, top_k, "replace"), *labels)
    assert abs(replaced.mAP - expected.mAP) > 1e-4  # "sum" does differ.


def numpy_reference_num_matches(labels):
  q_pids, g_pids, q_cams, g_cams = labels
  same = q_pids[:, None] == g_pids[None]
  return (same & (q_cams[:, None] != g_cams[None])).sum(1)


def test_two_stage_items_sent_are_group_unions():
  q_items, g_items, labels, q_feat, g_feat, d1, _ = integer_stages(5)
  stats = {}
  # One device, one tile: the queries with a match, padded to a multiple of
  # 8 rows with the first of them; groups of 4 rows. Each group's union of
  # top-10 lists is sent once, in chunks of 3 items.
  ranking.evaluate_two_stage(
      l1_pair, q_items, g_items, q_feat, g_feat, *labels, top_k=10,
      query_tile=1024, pair_batch=4, transfer_chunk=3, stats=stats)
  valid = np.flatnonzero(numpy_reference_num_matches(labels) > 0)
  src = np.full(-(-valid.size // 8) * 8, valid[0])
  src[:valid.size] = valid
  top = np.argsort(d1[valid], axis=1, kind="stable")[:, :10]
  # Padding rows send nothing.
  unions = [np.unique(top[lo:lo + 4]).size for lo in range(0, src.size, 4)]
  assert stats["items_sent"] == sum(unions)
  assert sum(unions) < valid.size * 10  # Shared candidates were sent once.


@pytest.mark.parametrize("top_k", [90, 12])
def test_two_stage_cuhk03_protocol(top_k):
  q_items, g_items, labels, q_feat, g_feat, d1, d2 = integer_stages(6)
  kwargs = dict(protocol="cuhk03", num_repeats=4, seed=3, max_rank=20)
  result = ranking.evaluate_two_stage(
      l1_pair, q_items, g_items, q_feat, g_feat, *labels, top_k=top_k,
      query_tile=8, pair_batch=3, **kwargs)
  expected = numpy_reference.evaluate_cuhk03_loop(
      two_stage_positions(d1, d2, top_k, "replace"), *labels, num_repeats=4,
      seed=3, max_rank=20)
  assert_same(result, expected)
  if top_k == 90:  # K = G: the full pairwise ranking, CUHK03 protocol.
    full = ranking.evaluate_pair_model(l1_pair, q_items, g_items, *labels,
                                       query_tile=8, gallery_tile=32, **kwargs)
    assert_same(result, full)
    market = ranking.evaluate_pair_model(l1_pair, q_items, g_items, *labels,
                                         query_tile=8, gallery_tile=32,
                                         max_rank=20)
    assert not np.allclose(full.cmc, market.cmc)  # The protocol was applied.


def test_gallery_is_streamed_in_tiles():
  q_items, g_items, labels = make_items(7)
  mesh = sharding.make_data_mesh()
  stream = ranking.GalleryStream(g_items, 32, mesh)
  assert (stream.tile, stream.num_tiles, stream.width) == (32, 3, 96)
  last = stream.host_tile(2)
  # Items 64..89, then copies of item 0 (a real item) as padding.
  np.testing.assert_array_equal(last["sequence"][:26], g_items["sequence"][64:])
  np.testing.assert_array_equal(last["sequence"][26:],
                                np.repeat(g_items["sequence"][:1], 6, axis=0))
  # Full tiles are views of the host array: no host copy of the gallery.
  assert np.shares_memory(stream.host_tile(0)["sequence"], g_items["sequence"])
  expected = np.abs(summed(q_items)[:, None] - summed(g_items)[None]).sum(-1)
  got = ranking.pairwise_distance_tiled(l1_pair, q_items, g_items,
                                        query_tile=8, gallery_tile=32)
  np.testing.assert_array_equal(got, expected)
  # Default tiles follow the bytes per item: 2048 x 24 x 8 float32 maps.
  big = jax_shape_item((2048, 24, 8))
  assert ranking.item_bytes(big) == 2048 * 24 * 8 * 4
  assert ranking.default_gallery_tile(ranking.item_bytes(big)) == min(
      ranking.default_gallery_tile(), (256 << 20) // (2048 * 24 * 8 * 4))


def test_at_most_two_gallery_tiles_on_the_device(monkeypatch):
  q_items, g_items, labels = make_items(8)
  put = ranking.GalleryStream.put
  alive = []

  def counting_put(self, t):
    # Gallery tiles already on the device when tile t is sent.
    alive.append(sum(a.shape == (32, 3, 5) for a in jax.live_arrays()))
    return put(self, t)

  monkeypatch.setattr(ranking.GalleryStream, "put", counting_put)
  result = ranking.evaluate_pair_model(l1_pair, q_items, g_items, *labels,
                                       query_tile=8, gallery_tile=32)
  assert len(alive) == 4 * 3  # 4 query tiles x 3 gallery tiles.
  assert max(alive) == 1  # Tile t + 1 is sent once block t - 1 is done.
  l1 = np.abs(summed(q_items)[:, None] - summed(g_items)[None]).sum(-1)
  assert_same(result, numpy_reference.evaluate_ranking_loop(l1, *labels))


def jax_shape_item(shape):
  """A one-item pytree whose per-item shape is ``shape`` (no data needed)."""
  return {"maps": np.lib.stride_tricks.as_strided(
      np.zeros(1, np.float32), (1,) + shape, (0,) * (len(shape) + 1))}


def test_bad_items():
  q_items, g_items, labels = make_items(3)
  bad = dict(g_items, mask=g_items["mask"][:5])
  with pytest.raises(ValueError, match="same non-zero leading"):
    ranking.evaluate_pair_model(l1_pair, q_items, bad, *labels)
  with pytest.raises(ValueError, match="top_k"):
    ranking.evaluate_two_stage(l1_pair, q_items, g_items,
                               np.zeros((30, 2)), np.zeros((90, 2)), *labels,
                               top_k=0)
  with pytest.raises(ValueError, match="'replace', 'sum'.*'mean'"):
    ranking.evaluate_two_stage(l1_pair, q_items, g_items,
                               np.zeros((30, 2)), np.zeros((90, 2)), *labels,
                               combine="mean")
