"""Evaluation: distances, ranking metrics (CMC, mAP, mINP), protocols, re-ranking.

* ``metrics``: ``evaluate_ranking`` on a (Q, G) distance matrix, Market-1501
  and CUHK03 protocols.
* ``streaming``: ``evaluate_features`` from features, sharded, no (Q, G).
* ``ranking``: pair models, full pairwise or two-stage top-K re-ranking.
* ``rerank``: k-reciprocal re-ranking.
* ``video``: tracklet feature pooling.
* ``distance``, ``features``, ``runner``: distances, embedding, the trainer's
  evaluator.
"""

from reidjax.evaluate.distance import pairwise_distance
from reidjax.evaluate.metrics import (
    RankingMetrics,
    evaluate_cuhk03,
    evaluate_ranking,
)
from reidjax.evaluate.numpy_reference import (
    evaluate_ranking_loop,
    evaluate_ranking_vectorized_numpy,
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
from reidjax.evaluate.streaming import evaluate_features
from reidjax.evaluate.video import aggregate_tracklets, pool_clips

__all__ = [
    "RankingMetrics",
    "aggregate_tracklets",
    "evaluate_cuhk03",
    "evaluate_features",
    "evaluate_pair_model",
    "evaluate_ranking",
    "evaluate_ranking_loop",
    "evaluate_ranking_vectorized_numpy",
    "evaluate_two_stage",
    "k_reciprocal_rerank",
    "k_reciprocal_rerank_features",
    "pairwise_distance",
    "pairwise_distance_tiled",
    "pool_clips",
]
