"""train.py end to end on a tiny synthetic set: train, checkpoint, resume, evaluate, restore."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(workdir, data_root, epochs):
  overrides = {
      "data.root": data_root,
      "data.synthetic.num_train_ids": 8, "data.synthetic.num_test_ids": 6,
      "data.synthetic.images_per_id": 12, "data.synthetic.num_distractors": 5,
      "data.synthetic.num_junk": 2,
      "data.height": 32, "data.width": 16, "data.pad": 2,
      "data.num_identities": 4, "data.num_instances": 2, "data.eval_batch_size": 32,
      "model.backbone.width": 4,
      "schedule.epochs": epochs, "schedule.warmup_epochs": 1, "schedule.kind": "cosine",
      "train.log_every_steps": 1, "train.checkpoint_every_steps": 4,
  }
  return ([sys.executable, "train.py", "--config", "configs/baseline.py:synthetic",
           "--workdir", str(workdir)]
          + [f"--config.{k}={v}" for k, v in overrides.items()])


def _env():
  return {**os.environ, "JAX_PLATFORMS": "cpu"}


def _losses(workdir):
  with open(os.path.join(workdir, "train_metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("synthetic") / "market")


def test_interrupted_run_resumes_exactly(tmp_path, data_root):
  epochs = 60  # 2 steps per epoch: 120 steps.
  reference = tmp_path / "reference"
  subprocess.run(_command(reference, data_root, epochs), cwd=_ROOT, env=_env(), check=True,
                 capture_output=True, timeout=600)
  expected = _losses(reference)
  assert sorted(expected) == list(range(1, 121))

  workdir = tmp_path / "interrupted"
  proc = subprocess.Popen(_command(workdir, data_root, epochs), cwd=_ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  first_checkpoint = workdir / "checkpoints" / "4"
  deadline = time.time() + 300
  while not first_checkpoint.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  log, _ = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]
  assert "Re-run the same command to resume" in log
  stopped_at = max(_losses(workdir))
  assert 4 <= stopped_at < 120, stopped_at
  assert os.path.isdir(workdir / "checkpoints" / str(stopped_at))

  resumed = subprocess.run(_command(workdir, data_root, epochs), cwd=_ROOT, env=_env(),
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"at step {stopped_at}" in resumed.stderr
  got = _losses(workdir)
  assert sorted(got) == list(range(1, 121))  # every step exactly once
  # Same data stream, same augmentations, same state: the same losses.
  np.testing.assert_allclose([got[s] for s in range(1, 121)],
                             [expected[s] for s in range(1, 121)], rtol=1e-5)
  final = json.load(open(workdir / "results.json"))
  want = json.load(open(reference / "results.json"))
  np.testing.assert_allclose(final["mAP"], want["mAP"], rtol=1e-5)
  assert final["num_valid_queries"] > 0


def test_restore_api_embeds_like_the_evaluator(tmp_path, data_root):
  from reidjax.data import layouts
  from reidjax.inference import ReidEmbedder
  from PIL import Image

  workdir = tmp_path / "run"
  subprocess.run(_command(workdir, data_root, 2), cwd=_ROOT, env=_env(), check=True,
                 capture_output=True, timeout=600)
  embedder = ReidEmbedder.from_workdir(str(workdir))
  assert embedder.config.model.num_classes == 8
  query = layouts.parse_market1501(data_root).query
  images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in query.paths[:5]])
  features = embedder.embed(images, batch_size=4)
  assert features.shape == (5, 4 * 8 * 4)  # width 4 x 8 x expansion 4
  assert np.all(np.isfinite(features))
  # Embedding is per image: a batch of one gives the same row.
  np.testing.assert_allclose(embedder.embed(images[2:3]), features[2:3], rtol=1e-4, atol=1e-5)


def test_missing_workdir_checkpoint_is_a_clear_error(tmp_path):
  from reidjax.inference import ReidEmbedder
  with pytest.raises(FileNotFoundError, match="train first"):
    ReidEmbedder.from_workdir(str(tmp_path))
