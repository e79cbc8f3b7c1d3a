"""train.py on miniature copies of real layouts (image: CUHK03, video: MARS),
and DuATM end to end on image and video data, restored for inference.

Every run's final metrics are checked against an independent ranking: the
restored checkpoint embeds the test splits through the evaluator's input
path, NumPy computes the distances (embedding models) and the NumPy
reference evaluator ranks them.
"""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from reidjax.data import synthetic_video
from tests.data.test_cuhk03 import _make_cuhk03

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(config, workdir, overrides):
  command = ([sys.executable, "train.py", "--config", config, "--workdir", str(workdir)]
             + [f"--config.{k}={v}" for k, v in overrides.items()])
  run = subprocess.run(command, cwd=_ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                       capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-4000:]
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  with open(os.path.join(workdir, "train_metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f]
  return results, steps, run.stderr


# Real-dataset configs refuse random weights unless asked (from_scratch).
_TINY_RESNET = {"model.backbone.stage_sizes": "(1,1,1,1)", "model.backbone.width": 4,
                "model.backbone.from_scratch": True}
_TINY_DENSENET = {"model.backbone.growth_rate": 4, "model.backbone.block_config": "(1,1,1,1)",
                  "model.backbone.num_init_features": 8, "model.dim": 8,
                  "model.backbone.from_scratch": True}
# "identities" epochs keep these miniature runs at a step or two an epoch.
_SHORT = {"schedule.epochs": 2, "schedule.warmup_epochs": 0, "schedule.milestones": "(1,)",
          "train.log_every_steps": 1, "data.epoch": "identities"}


def _restored(workdir, **eval_overrides):
  """The restored model, an Evaluator over its test splits built like
  train.py's, and the dataset."""
  from reidjax.data import clips, datasets, pipeline  # pylint: disable=g-import-not-at-top
  from reidjax.evaluate import runner  # pylint: disable=g-import-not-at-top
  from reidjax.inference import ReidEmbedder  # pylint: disable=g-import-not-at-top

  embedder = ReidEmbedder.from_workdir(str(workdir))
  config = embedder.config
  dataset, _ = datasets.load_data(config.data)
  d = config.data
  size = dict(batch_size=d.eval_batch_size, height=d.height, width=d.width)
  if d.video:
    make_batches = lambda split, plan: pipeline.eval_clip_batches(split, plan, **size)
    test_clips = lambda split: clips.plan_test_clips(
        split, clip_length=d.test_clip_length, strategy=d.test_clip_strategy,
        stride=d.test_clip_stride)
  else:
    make_batches = lambda split: pipeline.eval_batches(split, **size)
    test_clips = None
  with config.unlocked():
    config.eval.update(eval_overrides)
  evaluator = runner.Evaluator.from_config(
      config.eval, embedder.model, embedder.mesh, query=dataset.query,
      gallery=dataset.gallery, make_batches=make_batches, test_clips=test_clips,
      seed=config.seed)
  return embedder, evaluator, dataset


def _numpy_metrics(embedder, evaluator, dataset):
  """Features of the restored model ranked by NumPy distances and the NumPy
  reference evaluator (pair models: the model's pair distance)."""
  from reidjax.evaluate import numpy_reference  # pylint: disable=g-import-not-at-top
  query = evaluator.embed(embedder.variables, dataset.query)
  gallery = evaluator.embed(embedder.variables, dataset.gallery)
  if isinstance(query, dict):
    dist = embedder.distance(query, gallery)
  else:
    q, g = np.asarray(query, np.float64), np.asarray(gallery, np.float64)
    assert embedder.config.eval.metric == "cosine"
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    dist = 1.0 - q @ g.T
  return numpy_reference.evaluate_ranking_loop(
      dist, dataset.query.pids, dataset.gallery.pids, dataset.query.camids,
      dataset.gallery.camids, max_rank=embedder.config.eval.max_rank)


def _assert_same_metrics(got, want):
  """``got``: RankingMetrics; ``want``: a results.json dict."""
  np.testing.assert_allclose(got.mAP, want["mAP"], rtol=1e-4)
  np.testing.assert_allclose(got.mINP, want["mINP"], rtol=1e-4)
  np.testing.assert_allclose(got.cmc, want["cmc"], atol=1e-6)


@pytest.fixture(scope="module")
def tiny_mars(tmp_path_factory):
  root = tmp_path_factory.mktemp("video") / "MARS"
  synthetic_video.write_synthetic_mars(
      str(root), num_train_ids=6, num_test_ids=4, num_cameras=3, tracklets_per_id=2,
      min_frames=3, max_frames=6, height=32, width=32, num_distractor_tracklets=1,
      num_junk_tracklets=1)
  return root


def test_baseline_trains_on_a_miniature_cuhk03(tmp_path):
  root = _make_cuhk03(tmp_path / "cuhk03")
  results, steps, log = _train("configs/baseline.py:cuhk03_labeled", tmp_path / "wd", {
      "data.root": root, "data.height": 32, "data.width": 16, "data.pad": 2,
      "data.num_identities": 2, "data.num_instances": 2, "data.eval_batch_size": 4,
      **_TINY_RESNET, **_SHORT})
  assert "cuhk03_labeled" in log
  assert steps == [1, 2]  # 2 train ids / P = 2: one step an epoch
  assert results["num_valid_queries"] > 0
  _assert_same_metrics(_numpy_metrics(*_restored(tmp_path / "wd")), results)


def test_real_dataset_without_pretrained_weights_stops_with_what_to_do(tmp_path):
  command = [sys.executable, "train.py", "--config", "configs/baseline.py:market1501",
             "--workdir", str(tmp_path / "wd"), "--config.data.root", str(tmp_path)]
  run = subprocess.run(command, cwd=_ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                       capture_output=True, text=True, timeout=300)
  assert run.returncode != 0
  message = run.stderr + run.stdout
  assert "model.backbone.pretrained is empty" in message
  assert "--config.model.backbone.pretrained=/path/to/file.pth" in message
  assert "from_scratch=True" in message
  assert not (tmp_path / "wd").exists()  # stopped before anything was written


def test_baseline_trains_on_a_miniature_mars(tmp_path, tiny_mars):
  results, steps, log = _train("configs/baseline.py:mars", tmp_path / "wd", {
      "data.root": tiny_mars, "data.height": 32, "data.width": 16, "data.pad": 2,
      "data.num_identities": 3, "data.num_instances": 2, "data.eval_batch_size": 4,
      "data.clip_length": 3, "data.test_clip_length": 2, "data.test_clip_stride": 2,
      **_TINY_RESNET, **_SHORT})
  assert "tracklets" in log  # the video summary
  assert steps == [1, 2, 3, 4]  # 6 ids / P = 3: two steps an epoch
  # 4 test ids, one query tracklet each; every query is scored.
  assert results["num_valid_queries"] + results["num_skipped_queries"] == 4
  # Clip features pooled per tracklet by the evaluator, ranked by NumPy.
  _assert_same_metrics(_numpy_metrics(*_restored(tmp_path / "wd")), results)


def test_duatm_video_end_to_end_and_restored_for_ranking(tmp_path, tiny_mars):
  workdir = tmp_path / "wd"
  results, steps, _ = _train("configs/duatm.py:mars", workdir, {
      "data.root": tiny_mars, "data.height": 32, "data.width": 32, "data.pad": 2,
      "data.num_identities": 3, "data.num_instances": 2, "data.eval_batch_size": 4,
      "data.clip_length": 4, "data.test_clip_length": 5,
      "optimizer.freeze_backbone_epochs": 1, **_TINY_DENSENET, **_SHORT})
  assert steps == [1, 2, 3, 4]
  assert results["num_valid_queries"] + results["num_skipped_queries"] == 4
  _assert_same_metrics(_numpy_metrics(*_restored(workdir)), results)

  # Restore and rank: the pair distances of the restored model are the
  # DuATM distances (symmetric, ~0 on the diagonal).
  from reidjax.inference import ReidEmbedder  # pylint: disable=g-import-not-at-top
  embedder = ReidEmbedder.from_workdir(str(workdir))
  clips = np.random.default_rng(0).integers(0, 256, (3, 5, 32, 32, 3), np.uint8)
  items = embedder.embed(clips)
  assert items["x"].shape == (3, 5, 8)
  dist = embedder.distance(items, items)
  assert dist.shape == (3, 3)
  np.testing.assert_allclose(dist, dist.T, atol=1e-5)
  diagonal = np.abs(np.diag(dist)).max()
  assert diagonal < 1e-2 and dist[~np.eye(3, dtype=bool)].min() > diagonal


def test_duatm_image_two_stage_evaluation(tmp_path):
  workdir = tmp_path / "wd"
  results, steps, _ = _train("configs/duatm.py:synthetic", workdir, {
      "data.root": tmp_path / "market",
      "data.synthetic.num_train_ids": 4, "data.synthetic.num_test_ids": 3,
      "data.synthetic.images_per_id": 8, "data.synthetic.num_distractors": 2,
      "data.synthetic.num_junk": 1,
      "data.height": 64, "data.width": 32, "data.pad": 2,
      "data.num_identities": 2, "data.num_instances": 2, "data.eval_batch_size": 8,
      "eval.rerank_top_k": 5, **_TINY_DENSENET, **_SHORT})
  assert steps == [1, 2, 3, 4]
  embedder, two_stage, dataset = _restored(workdir)
  state = types.SimpleNamespace(**embedder.variables)  # what Evaluator.run reads
  # The run's final two-stage (K = 5) evaluation, reproduced from the checkpoint.
  again = two_stage.run(state, 0)
  for key in ("mAP", "mINP", "cmc"):
    np.testing.assert_allclose(again[key], results[key], rtol=1e-6)
  # Two-stage with K = the gallery size re-ranks every item by the full DuATM
  # distance: exactly the full pairwise ranking, and the NumPy ranking of it.
  full = _restored(workdir, rerank_top_k=0)[1].run(state, 0)
  every = _restored(workdir, rerank_top_k=len(dataset.gallery))[1].run(state, 0)
  for key in ("mAP", "mINP", "cmc", "num_valid_queries"):
    assert every[key] == full[key], key
  _assert_same_metrics(_numpy_metrics(embedder, two_stage, dataset), full)
