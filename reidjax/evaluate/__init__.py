"""Evaluation: distances, ranking metrics (CMC, mAP, mINP), protocols, re-ranking.

* ``metrics``: ``evaluate_ranking`` on a (Q, G) distance matrix; the
  protocols (Market-1501, CUHK03) in ``protocols``, the counting engines in
  ``counting`` (``cost_model``, ``host_pool``).
* ``streaming``: ``evaluate_features`` from features, sharded, no (Q, G).
* ``ranking``: pair models, full pairwise or two-stage top-K re-ranking.
* ``rerank``, ``rerank_sparse``: k-reciprocal re-ranking, dense and sparse
  streamed (MSMT17 scale).
* ``expansion``: average / alpha query expansion; ``verification``: TPR at
  fixed FPR.
* ``video``: tracklet feature pooling.
* ``distance``, ``features``, ``runner``: distances, embedding, the trainer's
  evaluator.

The NumPy reference evaluators (``numpy_reference``) are for tests and
benchmarks: import them from their module.
"""

from reidjax.evaluate.distance import pairwise_distance
from reidjax.evaluate.metrics import (
    RankingMetrics,
    evaluate_cuhk03,
    evaluate_ranking,
)
from reidjax.evaluate.ranking import (
    evaluate_pair_model,
    evaluate_two_stage,
    pairwise_distance_tiled,
)
from reidjax.evaluate.rerank import (
    k_reciprocal_rerank,
    k_reciprocal_rerank_features,
)
from reidjax.evaluate.rerank_sparse import (
    evaluate_sparse_rerank,
    k_reciprocal_rerank_sparse,
)
from reidjax.evaluate.expansion import expand_queries
from reidjax.evaluate.streaming import evaluate_features
from reidjax.evaluate.verification import roc_from_distmat, roc_from_features
from reidjax.evaluate.video import aggregate_tracklets, pool_clips

__all__ = [
    "RankingMetrics",
    "aggregate_tracklets",
    "evaluate_cuhk03",
    "evaluate_features",
    "evaluate_pair_model",
    "evaluate_sparse_rerank",
    "expand_queries",
    "evaluate_ranking",
    "evaluate_two_stage",
    "k_reciprocal_rerank",
    "k_reciprocal_rerank_features",
    "k_reciprocal_rerank_sparse",
    "pairwise_distance",
    "pairwise_distance_tiled",
    "pool_clips",
    "roc_from_distmat",
    "roc_from_features",
]
