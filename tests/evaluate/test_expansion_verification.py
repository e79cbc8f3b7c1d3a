"""Query expansion and verification ROC against NumPy computations."""

import numpy as np
import pytest

from reidjax.evaluate import expansion, metrics, verification


def features(seed, num_q=13, num_g=70, dim=8, ids=6):
  rng = np.random.default_rng(seed)
  centres = 2.0 * rng.normal(size=(ids, dim))
  q_pids, g_pids = rng.integers(0, ids, num_q), rng.integers(0, ids, num_g)
  q = (centres[q_pids] + rng.normal(size=(num_q, dim))).astype(np.float32)
  g = (centres[g_pids] + rng.normal(size=(num_g, dim))).astype(np.float32)
  labels = (q_pids, g_pids, rng.integers(0, 3, num_q),
            rng.integers(0, 3, num_g))
  return q, g, labels


def numpy_expansion(q, g, top_k, alpha):
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  gn = g / np.linalg.norm(g, axis=1, keepdims=True)
  out = []
  for row in qn.astype(np.float64):
    sim = gn @ row
    top = np.argsort(-sim, kind="stable")[:top_k]
    w = np.ones(top_k) if alpha is None else np.maximum(sim[top], 0) ** alpha
    x = row + (w[:, None] * gn[top]).sum(0)
    out.append(x / np.linalg.norm(x))
  return np.array(out), gn


@pytest.mark.parametrize("method, alpha", [("average", None), ("alpha", 3.0)])
def test_query_expansion_matches_numpy(method, alpha):
  q, g, labels = features(0)
  got_q, got_g = expansion.expand_queries(q, g, method=method, top_k=5,
                                          alpha=alpha or 0.0, query_tile=4)
  want_q, want_g = numpy_expansion(q, g, 5, alpha)
  np.testing.assert_allclose(got_q, want_q, atol=1e-5)
  np.testing.assert_allclose(got_g, want_g, atol=1e-6)
  assert np.abs(got_q - q / np.linalg.norm(q, axis=1, keepdims=True)).max() > 0.05
  # Ranked: the same metrics as the NumPy-expanded cosine distances.
  got = metrics.evaluate_ranking(1.0 - got_q @ got_g.T, *labels)
  want = metrics.evaluate_ranking(1.0 - want_q @ want_g.T, *labels)
  assert got.mAP == pytest.approx(want.mAP, abs=1e-6)


def test_query_expansion_bad_options():
  with pytest.raises(ValueError, match="query_expansion must be one of"):
    expansion.check_options("dba", 5, 1.0)
  with pytest.raises(ValueError, match="top_k must be a positive int"):
    expansion.check_options("average", 0, 1.0)


def numpy_roc(dist, q_pids, g_pids, q_cams, g_cams, fpr):
  same = q_pids[:, None] == g_pids[None]
  pos = dist[same & (q_cams[:, None] != g_cams[None])]
  neg = np.sort(dist[~same])
  best = 0.0
  for t in np.unique(np.concatenate([dist.ravel(), [np.inf]])):
    if (neg < t).sum() <= fpr * neg.size:  # accept d < t
      best = max(best, (pos < t).mean())
  return best


def test_verification_matches_numpy_and_streams():
  q, g, labels = features(1, num_q=40, num_g=300)
  # Rounded: ties between pairs at the threshold.
  dist = np.round(((q[:, None] - g[None]) ** 2).sum(-1), 0).astype(np.float32)
  fprs = (1e-3, 1e-2, 0.1)
  got = verification.roc_from_distmat(dist, *labels, fprs=fprs, row_tile=7)
  for f in fprs:
    assert got[f"tpr@fpr={f:g}"] == pytest.approx(
        numpy_roc(dist, *labels, f), abs=1e-12)
    assert got[f"fpr@fpr={f:g}"] <= f
  assert got["tpr@fpr=0.1"] > got["tpr@fpr=0.001"]
  # From features, tile by tile: the same figures.
  streamed = verification.roc_from_features(
      q, g, *labels, metric="euclidean", fprs=fprs, query_tile=16)
  exact = verification.roc_from_distmat(((q[:, None] - g[None]) ** 2).sum(-1),
                                        *labels, fprs=fprs)
  for f in fprs:
    assert streamed[f"tpr@fpr={f:g}"] == pytest.approx(
        exact[f"tpr@fpr={f:g}"], abs=1e-3)
