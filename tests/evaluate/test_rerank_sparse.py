"""Sparse streamed k-reciprocal re-ranking against the dense path and NumPy."""

import numpy as np
import pytest

from reidjax.evaluate import metrics, numpy_reference, rerank, rerank_sparse
from reidjax.evaluate import distance


def integer_problem(seed, num_q, num_g, dim=4):
  """Small integer features: exact distances, many ties."""
  rng = np.random.default_rng(seed)
  q = rng.integers(-2, 3, (num_q, dim)).astype(np.float32)
  g = rng.integers(-2, 3, (num_g, dim)).astype(np.float32)
  labels = (rng.integers(0, 5, num_q), rng.integers(0, 5, num_g),
            rng.integers(0, 3, num_q), rng.integers(0, 3, num_g))
  return q, g, labels


@pytest.mark.parametrize("num_q, num_g, k1, k2, lam", [
    (12, 60, 20, 6, 0.3),  # the paper's parameters
    (9, 40, 7, 1, 0.5),  # k2 = 1: no query expansion; odd k1
])
def test_sparse_equals_dense_with_ties(num_q, num_g, k1, k2, lam):
  q, g, labels = integer_problem(num_q, num_q, num_g)
  dense = rerank.k_reciprocal_rerank_features(q, g, k1=k1, k2=k2,
                                              lambda_value=lam)
  # Tiles that do not divide P: padding rows must not leak in.
  sparse = rerank_sparse.k_reciprocal_rerank_sparse(
      q, g, k1=k1, k2=k2, lambda_value=lam, row_tile=32, query_tile=5)
  np.testing.assert_allclose(sparse, dense, rtol=0, atol=1e-6)
  # And the independent NumPy loop (Zhong et al.'s steps, written out).
  both = np.concatenate([q, g])
  full = ((both[:, None] - both[None]) ** 2).sum(-1)
  expected = numpy_reference.k_reciprocal_rerank(
      full[:num_q, num_q:], full[:num_q, :num_q], full[num_q:, num_q:], k1,
      k2, lam)
  np.testing.assert_allclose(sparse, expected, rtol=0, atol=1e-6)
  # Metrics streamed per query tile = the metrics of the dense matrix.
  got = rerank_sparse.evaluate_sparse_rerank(
      q, g, *labels, k1=k1, k2=k2, lambda_value=lam, max_rank=10,
      query_tile=4, row_tile=32)
  want = metrics.evaluate_ranking(dense, *labels, max_rank=10)
  np.testing.assert_allclose(got.cmc, want.cmc, atol=1e-12)
  assert got.mAP == pytest.approx(want.mAP, abs=1e-12)
  assert got.mINP == pytest.approx(want.mINP, abs=1e-12)
  assert (got.num_valid_queries, got.num_skipped_queries) == (
      want.num_valid_queries, want.num_skipped_queries)
  # Not a no-op: the Jaccard term moves the distances.
  plain = np.asarray(distance.pairwise_distance(q, g))
  assert np.abs(sparse - lam * plain / full.max(axis=1)[:num_q, None]).max() > 0.1


def test_sparse_support_is_small():
  q, g, _ = integer_problem(3, 12, 60)
  state = rerank_sparse.sparse_rerank_state(q, g, k1=20, k2=6, row_tile=32)
  p = 72
  assert state.v_idx.shape[0] == p and state.support < p
  # Rows of V sum to 1 (Eq. 7, then a mean of k2 such rows).
  np.testing.assert_allclose(state.v_val.sum(axis=1), 1.0, atol=1e-5)
  used = state.v_idx < p
  assert (used[:, :-1] >= used[:, 1:]).all()  # members first, then empties
  both = used[:, :-1] & used[:, 1:]
  assert (np.diff(state.v_idx, axis=1)[both] > 0).all()  # ascending, unique


def test_choose_method(monkeypatch):
  monkeypatch.setattr(rerank, "available_bytes", lambda: 2 * 24 * 1000**2)
  assert rerank_sparse.choose_method(1000) == "dense"
  assert rerank_sparse.choose_method(1001) == "sparse"
  assert rerank_sparse.choose_method(10, "sparse") == "sparse"
  assert rerank_sparse.choose_method(10**6, "dense") == "dense"
  monkeypatch.setattr(rerank, "available_bytes", lambda: None)
  assert rerank_sparse.choose_method(20_000) == "dense"
  assert rerank_sparse.choose_method(20_001) == "sparse"
  with pytest.raises(ValueError, match="method must be one of"):
    rerank_sparse.choose_method(10, "fast")
