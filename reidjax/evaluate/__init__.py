"""Evaluation: distance matrices and ranking metrics (CMC, mAP, mINP)."""

from reidjax.evaluate.distance import pairwise_distance
from reidjax.evaluate.metrics import RankingMetrics, evaluate_ranking
from reidjax.evaluate.numpy_reference import (
    evaluate_ranking_loop,
    evaluate_ranking_vectorized_numpy,
)

__all__ = [
    "RankingMetrics",
    "evaluate_ranking",
    "evaluate_ranking_loop",
    "evaluate_ranking_vectorized_numpy",
    "pairwise_distance",
]
