"""Evaluating a model during or after training: embed query and gallery, rank, score.

Embedding models only for now (distances are one matrix product); pair
models get a tiled pairwise path in the evaluator issue.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable

import flax.linen as nn
import numpy as np
from absl import logging
from jax.sharding import Mesh

from reidjax.evaluate import distance, features, metrics
from reidjax.models import interface
from reidjax.train import progress


class Evaluator:
  """Scores a train state on a query / gallery pair of splits.

  Attributes:
    model: the Flax module (an embedding model).
    mesh: the data mesh.
    query, gallery: splits with ``pids`` and ``camids`` (``ImageSplit``).
    make_batches: ``split -> iterable of eval batches`` (images, mask, index),
      e.g. ``functools.partial(reidjax.data.pipeline.eval_batches, ...)``.
    metric: ``"cosine"`` or ``"euclidean"``.
    max_rank: length of the CMC curve.
    workdir: if set, every result is appended to ``eval_metrics.jsonl``.
  """

  def __init__(self, model: nn.Module, mesh: Mesh, *, query: Any, gallery: Any,
               make_batches: Callable[[Any], Iterable[dict[str, np.ndarray]]],
               metric: str = "cosine", max_rank: int = 50,
               workdir: str | None = None):
    if interface.model_kind(model) != interface.EMBEDDING:
      raise NotImplementedError(
          f"{type(model).__name__} is a pair model; pair-model ranking is not "
          "available in this evaluator yet.")
    self.model, self.mesh = model, mesh
    self.query, self.gallery = query, gallery
    self.make_batches = make_batches
    self.metric, self.max_rank = metric, max_rank
    self.workdir = workdir
    self._embed = features.make_embed_fn(model, mesh)

  def embed(self, variables: Any, split: Any) -> np.ndarray:
    """(N, D) features of every item of ``split``, in order."""
    return features.extract_features(self._embed, variables, self.make_batches(split),
                                     len(split), self.mesh)

  def run(self, state: Any, step: int) -> dict[str, Any]:
    """Embeds both splits with ``state``'s variables and returns the metrics dict."""
    start = time.perf_counter()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    query_features = self.embed(variables, self.query)
    gallery_features = self.embed(variables, self.gallery)
    distmat = np.asarray(distance.pairwise_distance(
        query_features, gallery_features, metric=self.metric))
    result = metrics.evaluate_ranking(
        distmat, self.query.pids, self.gallery.pids, self.query.camids,
        self.gallery.camids, max_rank=self.max_rank).to_dict()
    result.update(step=int(step), metric=self.metric,
                  seconds=time.perf_counter() - start)
    logging.info("eval @ step %d: mAP %.4f  rank-1 %.4f  mINP %.4f (%d queries, %d "
                 "skipped)", step, result["mAP"], result["rank1"], result["mINP"],
                 result["num_valid_queries"], result["num_skipped_queries"])
    if self.workdir:
      progress.append_jsonl(os.path.join(self.workdir, "eval_metrics.jsonl"), result)
    return result
