"""train.py on miniature copies of real layouts (image: CUHK03, video: MARS),
and DuATM end to end on image and video data, restored for inference."""

import json
import os
import subprocess
import sys

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


_TINY_RESNET = {"model.backbone.stage_sizes": "(1,1,1,1)", "model.backbone.width": 4}
_TINY_DENSENET = {"model.backbone.growth_rate": 4, "model.backbone.block_config": "(1,1,1,1)",
                  "model.backbone.num_init_features": 8, "model.dim": 8}
_SHORT = {"schedule.epochs": 2, "schedule.warmup_epochs": 0, "schedule.milestones": "(1,)",
          "train.log_every_steps": 1}


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
  assert results["num_valid_queries"] + results["num_skipped_queries"] > 0
  assert 0.0 <= results["mAP"] <= 1.0


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
  assert 0.0 <= results["mAP"] <= 1.0


def test_duatm_video_end_to_end_and_restored_for_ranking(tmp_path, tiny_mars):
  workdir = tmp_path / "wd"
  results, steps, _ = _train("configs/duatm.py:mars", workdir, {
      "data.root": tiny_mars, "data.height": 32, "data.width": 32, "data.pad": 2,
      "data.num_identities": 3, "data.num_instances": 2, "data.eval_batch_size": 4,
      "data.clip_length": 4, "data.test_clip_length": 5,
      "optimizer.freeze_backbone_epochs": 1, **_TINY_DENSENET, **_SHORT})
  assert steps == [1, 2, 3, 4]
  assert results["num_valid_queries"] + results["num_skipped_queries"] == 4

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
  results, steps, _ = _train("configs/duatm.py:synthetic", tmp_path / "wd", {
      "data.root": tmp_path / "market",
      "data.synthetic.num_train_ids": 4, "data.synthetic.num_test_ids": 3,
      "data.synthetic.images_per_id": 8, "data.synthetic.num_distractors": 2,
      "data.synthetic.num_junk": 1,
      "data.height": 64, "data.width": 32, "data.pad": 2,
      "data.num_identities": 2, "data.num_instances": 2, "data.eval_batch_size": 8,
      "eval.rerank_top_k": 5, "model.matching": "intra", **_TINY_DENSENET, **_SHORT})
  assert steps == [1, 2, 3, 4]
  assert 0.0 <= results["mAP"] <= 1.0
