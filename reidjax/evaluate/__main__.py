r"""Evaluates a trained workdir and writes a report folder.

  python -m reidjax.evaluate --workdir workdirs/duatm_synthetic
  python -m reidjax.evaluate --workdir W --step 2000 --flip --rerank
  python -m reidjax.evaluate --workdir W --top_k 100          # pair models: two-stage
  python -m reidjax.evaluate --workdir workdirs/market --out reports/duke \
      --config.data.name=dukemtmc --config.data.root=/data/DukeMTMC-reID   # cross-domain

Restores the latest (or ``--step``) checkpoint of the workdir onto every
device of this process, embeds the query and gallery of the run's dataset
(or of the dataset the ``--config.*`` overrides name; any field of the run's
config can be overridden, e.g. ``--config.eval.metric=euclidean``) with the
trainer's own evaluator (``reidjax.evaluate.runner.Evaluator``), so that the
metrics equal the training run's final evaluation for the same settings.

Options: ``--flip`` (flip test-time augmentation, ``eval.flip``),
``--top_k K`` (pair models: rank by the global embedding, re-rank each
query's top K by the pair distance, ``eval.rerank_top_k``), ``--rerank``
(k-reciprocal re-ranking, Zhong et al. CVPR 2017, of the (Q + G)^2 distances:
``reidjax.evaluate.rerank.k_reciprocal_rerank`` with the config's
``eval.rerank_k1``, ``rerank_k2``, ``rerank_lambda``; its memory grows as
(Q + G)^2).

The report folder (default ``<workdir>/report_<step>_<dataset>``) holds:

* ``metrics.json``: rank-1/5/10, mAP, mINP, the CMC curve, query counts, the
  step, the dataset and the options;
* ``cmc.png``: the CMC curve (``reidjax.viz.report.plot_cmc``);
* ``ranked_worst.png`` / ``ranked_best.png``: the ranked lists of the
  ``--num_queries`` queries with the lowest / highest average precision
  (``reidjax.viz.report.ranked_list_image``; ties by query index), ranked
  by the full (Q, G) distances: the run's metric, the pair distance for pair
  models (also with ``--top_k``), the re-ranked distances with ``--rerank``;
* ``attention.png``: the paper's figure of the best query and its rank-1
  gallery item where the paper has one (``reidjax.viz.paper_figure``: DuATM,
  DCANet, CACE-Net, FGRA, Attention-Driven ReID with the items' keypoints;
  none for the baseline); ``metrics.json`` then names the two items under
  ``attention_items``.

A relative ``data.root`` (the synthetic sets' default) is read relative to
the current directory; the synthetic sets are written there on first use.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging
from ml_collections import config_flags

def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(
      prog="python -m reidjax.evaluate",
      description="Evaluate a trained workdir; write metrics, CMC and ranked lists.")
  parser.add_argument("--workdir", required=True, help="the training run's workdir")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--out", default=None,
                      help="report folder (default <workdir>/report_<step>_<dataset>)")
  parser.add_argument("--flip", action="store_true", help="flip test-time augmentation")
  parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
  parser.add_argument("--top_k", type=int, default=None,
                      help="pair models: two-stage ranking, re-rank each query's top K")
  parser.add_argument("--num_queries", type=int, default=5,
                      help="queries in each ranked-list figure")
  parser.add_argument("--ranks", type=int, default=10, help="gallery items per ranked list")
  from reidjax import distributed  # pylint: disable=g-import-not-at-top
  distributed.add_arguments(parser)  # several processes: README "Several hosts"
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    parser.error(f"unrecognised arguments {bad}; config fields are overridden with "
                 "--config.<section>.<field>=<value>.")
  return args, rest


def _override(config, overrides: list[str]):
  """The run's config with ``--config.*=value`` overrides (ml_collections flags)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_dict("config", config, flag_values=flag_values,
                                  lock_config=False)
  flag_values(["reidjax.evaluate"] + overrides)
  return flag_values.config


def average_precision_per_query(distmat: np.ndarray, query_pids, gallery_pids,
                                query_camids, gallery_camids,
                                camera_filter: bool = True) -> np.ndarray:
  """(Q,) average precision of each query (NaN: no valid match), Market protocol."""
  g_pids, g_cams = np.asarray(gallery_pids), np.asarray(gallery_camids)
  out = np.full(distmat.shape[0], np.nan)
  for q in range(distmat.shape[0]):
    order = np.argsort(distmat[q], kind="stable")
    if camera_filter:
      order = order[~((g_pids[order] == query_pids[q]) & (g_cams[order] == query_camids[q]))]
    matches = g_pids[order] == query_pids[q]
    if matches.any():
      hits = np.flatnonzero(matches)
      out[q] = np.mean(np.arange(1, hits.size + 1) / (hits + 1))
  return out


def evaluate_workdir(workdir: str, *, step: int | None = None, out: str | None = None,
                     flip: bool = False, rerank: bool = False, top_k: int | None = None,
                     num_queries: int = 5, ranks: int = 10,
                     overrides: Sequence[str] = ()) -> dict[str, Any]:
  """Evaluates ``workdir``'s checkpoint and writes the report folder.

  Returns:
    The metrics dict written to ``metrics.json`` (with ``report_dir``).
  """
  # pylint: disable=g-import-not-at-top
  from reidjax import inference
  from reidjax.data import build, datasets
  from reidjax.evaluate import metrics as metrics_lib, rerank as rerank_lib
  from reidjax.models import build_model, interface
  from reidjax import checkpoint, logs, sharding
  from reidjax.models.variables import abstract_variables
  from reidjax.viz import report
  # pylint: enable=g-import-not-at-top
  logs.quiet_library_logs()
  ckpt = checkpoint.Checkpointer(workdir, save_every_steps=1)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f"No checkpoint under {ckpt.directory!r}; train first with "
                            f"`python train.py --config ... --workdir {workdir}`.")
  step = ckpt.latest_step() if step is None else step
  trained = ckpt.restore_config(step)
  config = _override(ckpt.restore_config(step), list(overrides))
  with config.unlocked():
    config.eval.flip = bool(flip or config.eval.get("flip", False))
    if top_k is not None:
      config.eval.rerank_top_k = top_k
  mesh = sharding.make_data_mesh()
  model = build_model(config.model, trained.model.num_classes)
  # The variables' shapes come from the config the run was trained with.
  variables = ckpt.restore_variables(abstract_variables(model, trained.data, mesh), step)
  ckpt.close()

  dataset, readers = datasets.load_data(config.data)
  logging.info("%s", dataset.summary())
  fields = interface.input_fields(model)
  interface.check_flip(fields, config.eval.flip)
  make_batches, test_clips = build.eval_inputs(
      config.data, dataset, readers, fields, process_index=jax.process_index(),
      process_count=jax.process_count())
  evaluator = inference.RecordingEvaluator.from_config(
      config.eval, model, mesh, query=dataset.query, gallery=dataset.gallery,
      make_batches=make_batches, test_clips=test_clips, seed=config.seed)
  state = _VariablesState(variables)
  result = evaluator.run(state, step)
  labels = (dataset.query.pids, dataset.gallery.pids, dataset.query.camids,
            dataset.gallery.camids)
  distmat = evaluator.distances()
  if rerank:
    q, g = evaluator.last_features["query"], evaluator.last_features["gallery"]
    pair = lambda a, b: inference.query_distances(
        evaluator.kind, a, b, metric=evaluator.metric, normalize=evaluator.normalize,
        pair_fn=evaluator._pair_fn, params=variables, mesh=mesh)  # pylint: disable=protected-access
    distmat = rerank_lib.k_reciprocal_rerank(
        distmat, pair(q, q), pair(g, g), k1=config.eval.rerank_k1,
        k2=config.eval.rerank_k2, lambda_value=config.eval.rerank_lambda)
    reranked = metrics_lib.evaluate_ranking(distmat, *labels, max_rank=evaluator.max_rank,
                                            **evaluator._protocol)  # pylint: disable=protected-access
    result.update(reranked.to_dict())

  if jax.process_index() != 0:
    return result  # Every collective is above; process 0 alone writes the report.
  name = config.data.name
  out = out or os.path.join(workdir, f"report_{step}_{name}")
  os.makedirs(out, exist_ok=True)
  result.update(step=int(step), dataset=name, data_root=config.data.root, flip=config.eval.flip,
                rerank=bool(rerank), rerank_top_k=config.eval.get("rerank_top_k", 0) or 0,
                model=config.model.name, workdir=os.path.abspath(workdir), report_dir=out)
  report.plot_cmc({f"{config.model.name} on {name}": np.asarray(result["cmc"])},
                  os.path.join(out, "cmc.png"),
                  title=f"CMC, step {step}: mAP {100 * result['mAP']:.1f}%")

  camera_filter = evaluator._protocol["camera_filter"]  # pylint: disable=protected-access
  ap = average_precision_per_query(distmat, *labels, camera_filter=camera_filter)
  valid = np.flatnonzero(~np.isnan(ap))
  by_ap = valid[np.argsort(ap[valid], kind="stable")]
  items_q = inference.split_items(dataset.query)
  items_g = inference.split_items(dataset.gallery)
  for label, chosen in (("worst", by_ap[:num_queries]), ("best", by_ap[::-1][:num_queries])):
    if chosen.size:
      report.ranked_list_image(items_q, items_g, distmat[chosen], *labels,
                               query_indices=chosen, top_k=ranks,
                               camera_filter=camera_filter,
                               path=os.path.join(out, f"ranked_{label}.png"))
  if by_ap.size:
    best = int(by_ap[-1])
    top1 = report.ranked_lists(distmat[best:best + 1], dataset.query.pids[best:best + 1],
                               dataset.gallery.pids, dataset.query.camids[best:best + 1],
                               dataset.gallery.camids, 1, camera_filter)[0][0]
    figure = os.path.join(out, "attention.png")
    if inference.paper_figure(config.model.name, model, variables, config.data,
                              (dataset.query, "query", best),
                              (dataset.gallery, "gallery", int(top1)), figure) is not None:
      result["attention_figure"] = figure
      result["attention_items"] = [
          item if isinstance(item, str) else [str(frame) for frame in item]
          for item in (items_q[best], items_g[int(top1)])]
  with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1, sort_keys=True)
  print(f"{name} @ step {step}: mAP {result['mAP']:.4f}  rank-1 {result['rank1']:.4f}  "
        f"mINP {result['mINP']:.4f}; report in {out}", flush=True)
  return result


class _VariablesState:
  """What ``Evaluator.run`` reads of a train state: params and batch_stats."""

  def __init__(self, variables: dict[str, Any]):
    self.params = variables["params"]
    self.batch_stats = variables.get("batch_stats", {})


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args, overrides = _parse(sys.argv[1:] if argv is None else argv)
  logging.use_absl_handler()  # absl's format, and quiet_library_logs' filter applies
  logging.set_verbosity(logging.INFO)
  from reidjax import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize_from_arguments(args)  # before anything touches the devices
  return evaluate_workdir(args.workdir, step=args.step, out=args.out, flip=args.flip,
                          rerank=args.rerank, top_k=args.top_k,
                          num_queries=args.num_queries, ranks=args.ranks,
                          overrides=overrides)


if __name__ == "__main__":
  main()
