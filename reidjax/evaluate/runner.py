"""Evaluating a model during or after training: embed query and gallery, rank, score.

``Evaluator.from_config(config.eval, model, mesh, ...)`` builds it from the
``eval`` config section (keys: ``EVAL_KEYS``, the Evaluator options; an unknown
key is an error naming the accepted ones).

Embedding models: distances are one matrix product (the full matrix, or
streamed over query tiles with ``streaming=True``). Pair models: the model's
``pair_distance`` over (query tile x gallery tile) blocks
(``ranking.evaluate_pair_model``), or only over each query's top
``rerank_top_k`` of the ranking by the ``"global"`` embedding
(``ranking.evaluate_two_stage``; ``rerank_combine``: rank the top K by the
pair distance alone, ``"replace"``, or by the sum of both stages' distances,
``"sum"``, as CACE-Net ranks). Pair-model items stay in host memory and are
streamed to the devices in tiles (see ``ranking.py`` for the memory figures).

Video splits (``test_clips`` given): each tracklet is cut into the clips of
a plan (``reidjax.data.clips.plan_test_clips``); embedding models pool the
clip features of a tracklet (``video.aggregate_tracklets``, mean or max),
pair models need exactly one clip per tracklet (their items are sequences,
which have no mean).

Embedding models, optional steps (``eval`` keys): ``query_expansion``
(``"average"`` / ``"alpha"`` QE of the queries from their
``query_expansion_top_k`` nearest gallery items, ``expansion.py``; the
streamed path too), then ``rerank`` (k-reciprocal re-ranking with
``rerank_k1``, ``rerank_k2``, ``rerank_lambda``: the dense ``rerank.py``
where its memory estimate fits, else the sparse streamed
``rerank_sparse.py``; ``rerank_method`` forces ``"dense"`` or
``"sparse"``), and ``verification`` (TPR at FPR 1e-4, 1e-3, 1e-2 over all
query-gallery pairs of the embedding distances, after query expansion and
before re-ranking; ``verification.py``, streamed).
"""

from __future__ import annotations

import inspect
import os
import time
from typing import Any, Callable, Iterable, Mapping

import flax.linen as nn
import numpy as np
from absl import logging
from jax.sharding import Mesh

from reidjax.evaluate import (distance, expansion, features, metrics, ranking, rerank,
                              rerank_sparse, streaming, verification, video)
from reidjax.models import interface
from reidjax import logs

# The ``eval`` config section: every accepted key with its default.
CLIP_POOLING = ("mean", "max")


def eval_options(eval_config: Any) -> dict[str, Any]:
  """The ``eval`` section as ``Evaluator`` keyword arguments.

  The accepted keys are the ``Evaluator`` options (``EVAL_KEYS``); a key the
  section leaves out takes the ``Evaluator``'s default, an unknown (e.g.
  misspelt) key raises ValueError naming it and the accepted keys.
  """
  if hasattr(eval_config, "to_dict"):
    eval_config = eval_config.to_dict()
  if not isinstance(eval_config, Mapping):
    raise TypeError(f"The eval config must be a mapping (ConfigDict or dict), got "
                    f"{type(eval_config).__name__}.")
  unknown = sorted(set(eval_config) - set(EVAL_KEYS))
  if unknown:
    raise ValueError(
        f"Unknown eval config key(s) {unknown}; the accepted keys are {sorted(EVAL_KEYS)}.")
  return dict(eval_config)


def _check_choice(name: str, value: Any, choices: tuple) -> None:
  if value not in choices:
    raise ValueError(f"eval.{name} must be one of {choices}, got {value!r}.")


class Evaluator:
  """Scores a train state on a query / gallery pair of splits.

  Attributes:
    model: the Flax module (an embedding or a pair model).
    mesh: the data mesh.
    query, gallery: splits with ``pids`` and ``camids`` (``ImageSplit``).
    make_batches: ``split -> iterable of eval batches`` (the model's input
      fields, ``interface.input_fields``, plus mask and index),
      e.g. ``functools.partial(reidjax.data.pipeline.eval_batches, ...)``.
    metric: ``"cosine"`` or ``"euclidean"``.
    max_rank: length of the CMC curve.
    workdir: if set, every result is appended to ``eval_metrics.jsonl``.
    flip: flip test-time augmentation (``features.make_embed_fn``):
      embedding models average the embeddings of an item and its mirror,
      pair models their features, prepared once.
    normalize: L2-normalise embeddings before the metric.
    protocol, num_repeats, seed, camera_filter: see
      ``metrics.evaluate_ranking`` (``"cuhk03"``: single-gallery-shot CMC).
    streaming: embedding models: rank from features in query tiles instead of
      building the (Q, G) matrix (MSMT17-sized sets).
    rerank_top_k: pair models: re-rank only each query's top K of the
      ranking by the ``"global"`` embedding; None or 0: full pairwise ranking.
    rerank_combine: two-stage score of the top K, ``"replace"`` (pair
      distance) or ``"sum"`` (first-stage + pair distance).
    test_clips: video: ``split -> plan`` with ``tracklet`` (C,) (the
      tracklet of each clip) and ``num_clips``; ``make_batches`` is then
      called as ``make_batches(split, plan)`` and yields clips.
    clip_pooling: ``"mean"`` or ``"max"`` over the clips of a tracklet.
    rerank, rerank_k1, rerank_k2, rerank_lambda, rerank_method: embedding
      models: k-reciprocal re-ranking (see module doc).
    query_expansion, query_expansion_top_k, query_expansion_alpha:
      embedding models: ``"none"``, ``"average"`` or ``"alpha"`` QE.
    verification: embedding models: add the verification TPRs.
  """

  def __init__(self, model: nn.Module, mesh: Mesh, *, query: Any, gallery: Any,
               make_batches: Callable[[Any], Iterable[dict[str, np.ndarray]]],
               metric: str = "cosine", max_rank: int = 50,
               workdir: str | None = None, flip: bool = False,
               normalize: bool = False, protocol: str = "market1501",
               num_repeats: int = 10, seed: int = 0,
               camera_filter: bool = True, streaming: bool = False,
               rerank_top_k: int | None = None,
               test_clips: Callable[[Any], Any] | None = None,
               clip_pooling: str = "mean", rerank_combine: str = "replace",
               rerank: bool = False, rerank_k1: int = 20, rerank_k2: int = 6,
               rerank_lambda: float = 0.3, rerank_method: str = "auto",
               query_expansion: str = "none", query_expansion_top_k: int = 10,
               query_expansion_alpha: float = 3.0, verification: bool = False):
    self.kind = interface.model_kind(model)
    _check_choice("rerank_method", rerank_method, rerank_sparse.METHODS)
    expansion.check_options(query_expansion, query_expansion_top_k,
                            query_expansion_alpha)
    if (rerank or query_expansion != "none" or verification) and (
        self.kind == interface.PAIR):
      logging.warning("eval.rerank / query_expansion / verification are for "
                      "embedding models; ignored for the pair model %s.",
                      type(model).__name__)
    _check_choice("metric", metric, distance.METRICS)
    _check_choice("protocol", protocol, metrics.PROTOCOLS)
    _check_choice("clip_pooling", clip_pooling, CLIP_POOLING)
    _check_choice("rerank_combine", rerank_combine, ranking.COMBINE)
    if rerank_top_k is not None and (
        not isinstance(rerank_top_k, (int, np.integer)) or rerank_top_k < 0):
      raise ValueError(f"eval.rerank_top_k must be an int >= 0 (0: full pairwise "
                       f"ranking), got {rerank_top_k!r}.")
    if rerank_top_k and self.kind != interface.PAIR:
      logging.warning("eval.rerank_top_k = %s is ignored: %s is an embedding model "
                      "(two-stage ranking is for pair models).", rerank_top_k,
                      type(model).__name__)
    self.model, self.mesh = model, mesh
    self.query, self.gallery = query, gallery
    self.make_batches = make_batches
    self.metric, self.max_rank = metric, max_rank
    self.workdir = workdir
    self.normalize, self.streaming = normalize, streaming
    self.rerank_top_k = rerank_top_k or None
    self.rerank_combine = rerank_combine
    self.fields = interface.input_fields(model)
    self.test_clips, self.clip_pooling = test_clips, clip_pooling
    self.rerank = dict(k1=rerank_k1, k2=rerank_k2,
                       lambda_value=rerank_lambda) if rerank else None
    self.rerank_method = rerank_method
    self.query_expansion = dict(method=query_expansion,
                                top_k=query_expansion_top_k,
                                alpha=query_expansion_alpha)
    self.verification = verification
    self._protocol = dict(protocol=protocol, num_repeats=num_repeats,
                          seed=seed, camera_filter=camera_filter)
    self._embed = features.make_embed_fn(model, mesh, flip=flip)
    # One function object for the whole run: the compiled ranking step is
    # reused at every evaluation (variables are passed as params).
    self._pair_fn = lambda variables, a, b: model.apply(
        variables, a, b, method="pair_distance")

  @classmethod
  def from_config(cls, eval_config: Any, model: nn.Module, mesh: Mesh, *,
                  query: Any, gallery: Any,
                  make_batches: Callable[..., Iterable[dict[str, np.ndarray]]],
                  test_clips: Callable[[Any], Any] | None = None,
                  workdir: str | None = None, seed: int = 0) -> "Evaluator":
    """An evaluator from the ``eval`` config section (keys: ``EVAL_KEYS``).

    Args:
      eval_config: the ``eval`` section (ConfigDict or dict); missing keys
        take their defaults, unknown keys raise ValueError.
      model, mesh, query, gallery, make_batches, test_clips, workdir: see
        the class attributes.
      seed: the CUHK03 protocol's sampling seed (the run's ``config.seed``).
    """
    options = eval_options(eval_config)
    return cls(model, mesh, query=query, gallery=gallery,
               make_batches=make_batches, test_clips=test_clips,
               workdir=workdir, seed=seed, **options)

  def embed(self, variables: Any, split: Any) -> Any:
    """(N, D) features (pair models: a dict) of every item of ``split``, in order."""
    if self.test_clips is None:
      return features.extract_features(self._embed, variables, self.make_batches(split),
                                       len(split), self.mesh, fields=self.fields)
    plan = self.test_clips(split)
    clip_features = features.extract_features(
        self._embed, variables, self.make_batches(split, plan), plan.num_clips, self.mesh,
        fields=self.fields)
    if np.array_equal(plan.tracklet, np.arange(len(split))):
      return clip_features  # one clip per tracklet, in order
    if self.kind == interface.PAIR:
      raise ValueError(
          f"A pair model compares one sequence per tracklet, but the test clip plan has "
          f"{plan.num_clips} clips for {len(split)} tracklets; use one clip per tracklet "
          "(data.test_clip_strategy = 'first' or 'evenly').")
    return video.aggregate_tracklets(clip_features, plan.tracklet,
                                     method=self.clip_pooling)["features"]

  def run(self, state: Any, step: int) -> dict[str, Any]:
    """Embeds both splits with ``state``'s variables and returns the metrics dict."""
    start = time.perf_counter()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    query_features = self.embed(variables, self.query)
    gallery_features = self.embed(variables, self.gallery)
    labels = (self.query.pids, self.gallery.pids, self.query.camids,
              self.gallery.camids)
    if self.kind == interface.PAIR and self.rerank_top_k:
      result = ranking.evaluate_two_stage(
          self._pair_fn, query_features, gallery_features,
          query_features["global"], gallery_features["global"], *labels,
          top_k=self.rerank_top_k, combine=self.rerank_combine,
          metric=self.metric, normalize=self.normalize, mesh=self.mesh,
          max_rank=self.max_rank, params=variables, **self._protocol)
    elif self.kind == interface.PAIR:
      result = ranking.evaluate_pair_model(
          self._pair_fn, query_features, gallery_features, *labels,
          mesh=self.mesh, max_rank=self.max_rank, params=variables,
          **self._protocol)
    else:
      result = self._rank_embeddings(query_features, gallery_features, labels)
    result = result.to_dict()
    if self.kind != interface.PAIR and self.verification:
      result.update(self._verify(query_features, gallery_features, labels))
    result.update(step=int(step), metric=self.metric,
                  protocol=self._protocol["protocol"],
                  seconds=time.perf_counter() - start)
    logging.info("eval @ step %d: mAP %.4f  rank-1 %.4f  mINP %.4f (%d queries, %d "
                 "skipped)", step, result["mAP"], result["rank1"], result["mINP"],
                 result["num_valid_queries"], result["num_skipped_queries"])
    if self.workdir:
      logs.append_jsonl(os.path.join(self.workdir, "eval_metrics.jsonl"), result)
    return result

  def _expanded(self, query_features, gallery_features):
    """Features after query expansion (unchanged without it)."""
    if self.query_expansion["method"] == "none":
      return query_features, gallery_features
    return expansion.expand_queries(query_features, gallery_features,
                                    **self.query_expansion)

  def _verify(self, query_features, gallery_features, labels) -> dict[str, Any]:
    query_features, gallery_features = self._expanded(query_features,
                                                      gallery_features)
    return verification.roc_from_features(
        query_features, gallery_features, *labels, metric=self.metric,
        normalize=self.normalize,
        camera_filter=self._protocol["camera_filter"])

  def _rank_embeddings(self, query_features, gallery_features, labels
                       ) -> metrics.RankingMetrics:
    """Embedding models: QE, then re-ranking or the plain ranking."""
    query_features, gallery_features = self._expanded(query_features,
                                                      gallery_features)
    if self.rerank is not None:
      num = len(query_features) + len(gallery_features)
      method = rerank_sparse.choose_method(num, self.rerank_method)
      if method == "sparse":
        if self._protocol["protocol"] != "market1501":
          raise ValueError("The sparse re-ranking scores the market1501 protocol "
                           "only; use eval.rerank_method = 'dense' for cuhk03.")
        return rerank_sparse.evaluate_sparse_rerank(
            query_features, gallery_features, *labels, metric=self.metric,
            normalize=self.normalize, max_rank=self.max_rank,
            camera_filter=self._protocol["camera_filter"], **self.rerank)
      distmat = rerank.k_reciprocal_rerank_features(
          query_features, gallery_features, metric=self.metric,
          normalize=self.normalize, **self.rerank)
      return metrics.evaluate_ranking(distmat, *labels, max_rank=self.max_rank,
                                      **self._protocol)
    if self.streaming:
      return streaming.evaluate_features(
          query_features, gallery_features, *labels, metric=self.metric,
          normalize=self.normalize, mesh=self.mesh, max_rank=self.max_rank,
          **self._protocol)
    distmat = np.asarray(distance.pairwise_distance(
        query_features, gallery_features, metric=self.metric,
        normalize=self.normalize))
    return metrics.evaluate_ranking(distmat, *labels, max_rank=self.max_rank,
                                    **self._protocol)


# The ``eval`` config keys: the Evaluator's options that a config sets (the
# splits, batches, workdir and seed come from the run, not the section).
EVAL_KEYS = tuple(
    name for name, p in inspect.signature(Evaluator.__init__).parameters.items()
    if p.kind == p.KEYWORD_ONLY
    and name not in ("query", "gallery", "make_batches", "test_clips", "workdir", "seed"))
