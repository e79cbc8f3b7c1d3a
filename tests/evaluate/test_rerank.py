"""k-reciprocal re-ranking (jitted) against the NumPy loop reference."""

import numpy as np
import pytest

from reidjax.evaluate import distance, metrics, numpy_reference, rerank


def clustered(seed, num_q, num_g, dim=6, ids=8):
  rng = np.random.default_rng(seed)
  centres = 2.0 * rng.normal(size=(ids, dim))
  q_pids, g_pids = rng.integers(0, ids, num_q), rng.integers(0, ids, num_g)
  q = (centres[q_pids] + rng.normal(size=(num_q, dim))).astype(np.float32)
  g = (centres[g_pids] + rng.normal(size=(num_g, dim))).astype(np.float32)
  return q, g, q_pids, g_pids


def blocks(q, g):
  both = np.concatenate([q, g])
  full = np.asarray(distance.pairwise_distance(both, both))
  n = q.shape[0]
  return full[:n, n:], full[:n, :n], full[n:, n:]


@pytest.mark.parametrize("num_q, num_g, k1, k2, lam", [
    (12, 60, 20, 6, 0.3),  # the paper's parameters
    (9, 40, 7, 1, 0.5),  # k2 = 1: no query expansion; odd k1
])
def test_matches_numpy_reference(num_q, num_g, k1, k2, lam):
  q, g, _, _ = clustered(num_q + k1, num_q, num_g)
  q_g, q_q, g_g = blocks(q, g)
  expected = numpy_reference.k_reciprocal_rerank(q_g, q_q, g_g, k1, k2, lam)
  result = rerank.k_reciprocal_rerank(q_g, q_q, g_g, k1=k1, k2=k2,
                                      lambda_value=lam)
  assert result.shape == (num_q, num_g) and result.dtype == np.float32
  np.testing.assert_allclose(result, expected, rtol=0, atol=1e-5)
  # Not a no-op: the Jaccard term changes the distances.
  original = (q_g.T / np.max(np.block([[q_q, q_g], [q_g.T, g_g]]),
                             axis=0)[:num_q]).T
  assert np.abs(result - lam * original).max() > 0.1


def test_features_front_end_and_ranking():
  q, g, q_pids, g_pids = clustered(0, 12, 60)  # Shapes compiled above.
  result = rerank.k_reciprocal_rerank_features(q, g)
  np.testing.assert_allclose(
      result, rerank.k_reciprocal_rerank(*blocks(q, g)), rtol=0, atol=1e-6)
  # Ranked like any distance matrix (cameras all differ here).
  m = metrics.evaluate_ranking(result, q_pids, g_pids, np.zeros(12, int),
                               np.ones(60, int))
  assert 0 < m.mAP <= 1


def test_refuses_what_does_not_fit(monkeypatch):
  q, g, _, _ = clustered(1, 5, 30)
  with pytest.raises(MemoryError, match=r"35 items .*max_items=20"):
    rerank.k_reciprocal_rerank(*blocks(q, g), k1=5, max_items=20)
  monkeypatch.setattr(rerank, "available_bytes", lambda: 1000)
  with pytest.raises(MemoryError, match=r"needs ~0\.0 GiB .*available"):
    rerank.k_reciprocal_rerank_features(q, g, k1=5)
  assert rerank.memory_bytes(19281) == 24 * 19281**2  # Market: ~8.3 GiB


def test_bad_parameters():
  q, g, _, _ = clustered(2, 4, 10)
  with pytest.raises(ValueError, match="k2"):
    rerank.k_reciprocal_rerank(*blocks(q, g), k1=20)  # k1 + 1 > 14 items
  with pytest.raises(ValueError, match="lambda"):
    rerank.k_reciprocal_rerank(*blocks(q, g), k1=3, k2=2, lambda_value=2.0)
