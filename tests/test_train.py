"""train.py end to end on a tiny synthetic set: train, checkpoint, evaluate, restore.

Resuming after SIGTERM and SIGKILL: tests/train/test_reliability.py.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(workdir, data_root, epochs, **extra):
  overrides = {
      "data.root": data_root,
      "data.synthetic.num_train_ids": 8, "data.synthetic.num_test_ids": 6,
      "data.synthetic.images_per_id": 12, "data.synthetic.num_distractors": 5,
      "data.synthetic.num_junk": 2,
      "data.height": 32, "data.width": 16, "data.pad": 2,
      "data.num_identities": 4, "data.num_instances": 2, "data.eval_batch_size": 32,
      "model.backbone.width": 4,
      "schedule.epochs": epochs, "schedule.warmup_epochs": 1, "schedule.kind": "cosine",
      "train.log_every_steps": 1, "train.checkpoint_every_steps": 4, **extra,
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


def _restored_metrics(workdir, data_root, **fields):
  """The restored model's features of the pipeline's test images, ranked by
  the NumPy reference evaluator; also returns the embedder and the query."""
  from reidjax.data import layouts, pipeline
  from reidjax.evaluate import numpy_reference
  from reidjax.inference import ReidEmbedder

  embedder = ReidEmbedder.from_workdir(str(workdir))
  dataset = layouts.parse_market1501(data_root)
  config = embedder.config.data

  def embed(split):
    batches = list(pipeline.eval_batches(split, batch_size=32, height=config.height,
                                         width=config.width))
    mask = np.concatenate([b["mask"] for b in batches])
    # Already normalised float images: ReidEmbedder only checks their size.
    images = np.concatenate([b["images"] for b in batches])[mask]
    extra = {k: np.concatenate([b[k] for b in batches])[mask] for k in fields}
    return embedder.embed(images, batch_size=8, **extra)

  query, gallery = embed(dataset.query), embed(dataset.gallery)
  dist = embedder.distance(query, gallery)
  result = numpy_reference.evaluate_ranking_loop(
      dist, dataset.query.pids, dataset.gallery.pids, dataset.query.camids,
      dataset.gallery.camids, max_rank=50)
  return result, embedder, dataset.query, query


def test_restore_api_embeds_like_the_evaluator(tmp_path, data_root):
  from PIL import Image

  workdir = tmp_path / "run"
  subprocess.run(_command(workdir, data_root, 2), cwd=_ROOT, env=_env(), check=True,
                 capture_output=True, timeout=600)
  trained = json.load(open(workdir / "results.json"))
  result, embedder, query, features = _restored_metrics(workdir, data_root)
  assert embedder.config.model.num_classes == 8
  assert features.shape == (len(query), 4 * 8 * 4)  # width 4 x 8 x expansion 4
  # The restored model ranks the test set exactly as the in-training evaluator
  # did (its features, the run's metric, an independent NumPy ranking).
  np.testing.assert_allclose(result.mAP, trained["mAP"], rtol=1e-5)
  np.testing.assert_allclose(result.cmc, trained["cmc"], rtol=1e-6)
  np.testing.assert_allclose(result.mINP, trained["mINP"], rtol=1e-5)
  # uint8 photos of any size work too, and embedding is per image.
  images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in query.paths[:5]])
  raw = embedder.embed(images, batch_size=4)
  np.testing.assert_allclose(embedder.embed(images[2:3]), raw[2:3], rtol=1e-4, atol=1e-5)
  # A paper's figure asks for its own model: another workdir is a clear error.
  from reidjax.inference import ReidEmbedder
  with pytest.raises(ValueError, match="holds a 'baseline' model; this needs model.name "
                     "'duatm'"):
    ReidEmbedder.from_workdir(str(workdir), model_name="duatm")


def test_a_model_with_a_second_input_field_trains_evaluates_and_restores(tmp_path, data_root):
  """The contract end to end: a model declaring images + camids gets both
  from the training and evaluation pipelines and from ReidEmbedder."""
  workdir = tmp_path / "camera"
  subprocess.run(_command(workdir, data_root, 2, **{
      "model.name": "tests.models.camera_model:ENTRY"}),
      cwd=_ROOT, env=_env(), check=True, capture_output=True, timeout=600)
  trained = json.load(open(workdir / "results.json"))
  result, embedder, query, _ = _restored_metrics(workdir, data_root, camids=True)
  np.testing.assert_allclose(result.mAP, trained["mAP"], rtol=1e-5)
  np.testing.assert_allclose(result.mINP, trained["mINP"], rtol=1e-5)
  # The camera offsets were trained (they start at zero) and change the embedding.
  table = np.asarray(embedder.variables["params"]["camera_offsets"]["table"])
  assert np.abs(table).max() > 1e-4
  from PIL import Image
  photos = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in query.paths[:2]])
  cams = np.array([query.camids[0], query.camids[0]], np.int32)
  other = (cams + 1) % 6
  np.testing.assert_allclose(embedder.embed(photos, camids=cams)
                             - embedder.embed(photos, camids=other),
                             np.broadcast_to(
                                 _bn(embedder, table[cams[0]]) - _bn(embedder, table[other[0]]),
                                 (2, table.shape[1])), rtol=1e-4, atol=1e-5)
  with pytest.raises(KeyError, match="camids"):
    embedder.embed(photos)


def _bn(embedder, offset):
  """The BNNeck's eval-mode scaling of a feature offset (its shift cancels)."""
  stats = embedder.variables["batch_stats"]["bnneck"]
  scale = embedder.variables["params"]["bnneck"]["scale"]
  return np.asarray(offset / np.sqrt(stats["var"] + 1e-5) * scale)


def test_missing_workdir_checkpoint_is_a_clear_error(tmp_path):
  from reidjax.inference import ReidEmbedder
  with pytest.raises(FileNotFoundError, match="train first"):
    ReidEmbedder.from_workdir(str(tmp_path))
