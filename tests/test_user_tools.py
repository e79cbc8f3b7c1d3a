"""The users' tools end to end on one tiny trained run (issue 16).

One module-scoped run of ``python train.py --config configs/baseline.py`` with
no --workdir (and tiny --config overrides) in a temporary directory, then:
the default workdir, TensorBoard's own reader on its event files, the
evaluate command (its metrics equal the run's final evaluation), the search
command's ranked list, and both export formats against the Flax model.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_TINY = {
    "data.synthetic.num_train_ids": 8, "data.synthetic.num_test_ids": 6,
    "data.synthetic.images_per_id": 12, "data.synthetic.num_distractors": 5,
    "data.synthetic.num_junk": 2,
    "data.height": 32, "data.width": 16, "data.pad": 2,
    "data.num_identities": 4, "data.num_instances": 2, "data.eval_batch_size": 32,
    "model.backbone.width": 4,
    "schedule.epochs": 2, "schedule.warmup_epochs": 1,
    "train.log_every_steps": 4, "train.eval_every_epochs": 1,
}


def _env():
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": _ROOT}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(cwd, workdir, stdout) of the tiny run; 2 epochs x 12 steps, evaluated after each."""
  cwd = tmp_path_factory.mktemp("users")
  command = ([sys.executable, os.path.join(_ROOT, "train.py"), "--config",
              os.path.join(_ROOT, "configs", "baseline.py")]
             + [f"--config.{k}={v}" for k, v in _TINY.items()])
  out = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return cwd, cwd / "workdirs" / "baseline_synthetic", out.stdout


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_train_without_workdir_uses_and_prints_the_default(run):
  cwd, workdir, stdout = run
  assert f"workdir: {workdir}" in stdout
  assert sorted(os.listdir(cwd / "workdirs")) == ["baseline_synthetic"]
  results = json.load(open(workdir / "results.json"))
  assert results["step"] == 24 and results["num_valid_queries"] > 0
  # The synthetic set went to the config's default root, under the cwd.
  assert os.path.isdir(cwd / "data" / "synthetic_market" / "bounding_box_train")


def test_tensorboard_events_hold_the_scalars_and_the_ranked_list(run):
  import io

  from PIL import Image
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util

  from reidjax.viz import report

  _, workdir, _ = run
  events = event_accumulator.EventAccumulator(
      str(workdir), size_guidance={event_accumulator.TENSORS: 0})
  events.Reload()
  tags = set(events.Tags()["tensors"])

  def series(tag):
    return {e.step: tensor_util.make_ndarray(e.tensor_proto) for e in events.Tensors(tag)}

  train = {r["step"]: r for r in _jsonl(workdir / "train_metrics.jsonl")}
  for name in ("loss", "lr", "images_per_s", "triplet", "ce"):
    got = series(f"train/{name}")
    assert sorted(got) == sorted(train) == [4, 8, 12, 16, 20, 24]
    np.testing.assert_allclose([float(got[s]) for s in train],
                               [train[s][name] for s in train], rtol=1e-6)
  evals = {r["step"]: r for r in _jsonl(workdir / "eval_metrics.jsonl")}
  assert sorted(evals) == [12, 24]
  for name in ("rank1", "rank5", "rank10", "mAP", "mINP"):
    got = series(f"eval/{name}")
    np.testing.assert_allclose([float(got[s]) for s in (12, 24)],
                               [evals[s][name] for s in (12, 24)], rtol=1e-6)
  assert "eval/ranked_list" in tags
  images = series("eval/ranked_list")
  assert sorted(images) == [12, 24]
  width, height, png = images[24]  # TensorBoard's image summary: [w, h, PNG]
  image = Image.open(io.BytesIO(png))
  # 4 queries x (query + top 10) in report.ranked_list_image's layout.
  cell = (128, 64)
  expected = (report.cell_origin(0, 11, cell)[0] - report.GAP + report.MARGIN,
              report.cell_origin(4, 0, cell)[1] - report.GAP + report.MARGIN)
  assert image.size == expected == (int(width), int(height))


def test_evaluate_command_reproduces_the_final_evaluation(run, tmp_path):
  from reidjax.evaluate.__main__ import average_precision_per_query

  cwd, workdir, _ = run
  out = tmp_path / "report"
  proc = subprocess.run([sys.executable, "-m", "reidjax.evaluate", "--workdir",
                         str(workdir), "--out", str(out), "--num_queries", "3"],
                        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.load(open(out / "metrics.json"))
  want = json.load(open(workdir / "results.json"))
  assert got["step"] == 24 and got["dataset"] == "synthetic"
  for key in ("mAP", "mINP", "rank1", "rank5"):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6)
  np.testing.assert_allclose(got["cmc"], want["cmc"], rtol=1e-6)
  for name in ("cmc.png", "ranked_worst.png", "ranked_best.png"):
    assert os.path.getsize(out / name) > 1000, name
  # Per-query APs (which pick the worst / best queries) average to the mAP.
  ap = average_precision_per_query(np.array([[0.1, 0.5, 0.2, 0.3]]), np.array([1]),
                                   np.array([1, 2, 1, 1]), np.array([0]),
                                   np.array([1, 1, 0, 1]))
  # Item 2 (same pid, same camera) is removed: matches at ranks 1 and 2 of 3.
  np.testing.assert_allclose(ap, [(1 / 1 + 2 / 2) / 2])


def _gallery_folder(cwd, tmp_path):
  """12 gallery crops (some resized, some PNG) and a copy of a query image."""
  from PIL import Image
  source = sorted((cwd / "data" / "synthetic_market" / "bounding_box_test").glob("0*.jpg"))
  query = sorted((cwd / "data" / "synthetic_market" / "query").glob("*.jpg"))[0]
  folder = tmp_path / "gallery"
  folder.mkdir()
  for i, path in enumerate(source[:12]):
    image = Image.open(path)
    if i % 3 == 1:
      image.resize((37, 90)).save(folder / f"{path.stem}.png")
    else:
      shutil.copy(path, folder / path.name)
  shutil.copy(query, folder / "zz_query_copy.jpg")
  return query, folder


def test_search_ranks_like_numpy_and_finds_the_query_itself(run, tmp_path):
  import reidjax
  from reidjax import inference, search

  cwd, workdir, _ = run
  query, folder = _gallery_folder(cwd, tmp_path)
  out = tmp_path / "ranked.png"
  assert search.main(["--workdir", str(workdir), "--query", str(query), "--gallery",
                      str(folder), "--top", "5", "--out", str(out)]) == str(out)
  assert os.path.getsize(out) > 1000

  embedder = reidjax.restore(str(workdir))
  assert isinstance(embedder, inference.ReidEmbedder)
  gallery = inference.list_images(str(folder))
  assert len(gallery) == 13
  order, distances = search.search(embedder, str(query), gallery)
  assert gallery[order[0]].endswith("zz_query_copy.jpg")
  assert distances[0] < 1e-5
  # Independent ranking: NumPy cosine similarity of the embedder's features.
  q = embedder.embed([str(query)])
  g = embedder.embed(gallery)
  assert embedder.config.eval.metric == "cosine"
  similarity = (g / np.linalg.norm(g, axis=1, keepdims=True)) @ (
      q[0] / np.linalg.norm(q[0]))
  np.testing.assert_array_equal(order, np.argsort(-similarity, kind="stable"))
  # Paths and arrays give the same features (files are loaded, then resized).
  arrays = inference.load_images(gallery, 32, 16)
  np.testing.assert_allclose(embedder.embed(arrays), g, rtol=1e-5, atol=1e-6)


def test_export_stablehlo_and_onnx_match_the_flax_model(run, tmp_path):
  import jax
  import onnxruntime

  from reidjax import export, inference

  cwd, workdir, _ = run
  embedder = inference.restore(str(workdir))
  rng = np.random.RandomState(0)
  batches = [rng.randint(0, 256, (n, 32, 16, 3)).astype(np.uint8) for n in (3, 5)]
  want = [embedder.embed(x) for x in batches]

  hlo = tmp_path / "model.jaxexport"
  export.main(["--workdir", str(workdir), "--format", "stablehlo", "--out", str(hlo)])
  exported = jax.export.deserialize(bytearray(hlo.read_bytes()))
  assert str(exported.in_avals[0].shape[0]) == "b"  # symbolic batch
  for x, w in zip(batches, want):
    np.testing.assert_allclose(np.asarray(exported.call(x)), w, rtol=1e-5, atol=1e-5)

  onnx_path = tmp_path / "model.onnx"
  export.main(["--workdir", str(workdir), "--format", "onnx", "--out", str(onnx_path)])
  session = onnxruntime.InferenceSession(str(onnx_path))
  (inp,) = session.get_inputs()
  assert inp.name == "images" and isinstance(inp.shape[0], str)  # dynamic batch
  for x, w in zip(batches, want):
    (got,) = session.run(None, {"images": x})
    np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4)


def test_pair_model_exports_its_per_item_embedding(tmp_path):
  """DuATM (a pair model): the StableHLO export returns the embed dict."""
  import jax

  from configs import duatm
  from reidjax import export, inference
  from reidjax.models import build_model
  from reidjax import sharding
  from reidjax.models.variables import init_variables

  config = duatm.get_config("synthetic")
  config.data.height, config.data.width = 64, 32
  config.model.backbone.growth_rate, config.model.dim = 4, 16
  model = build_model(config.model, 5)
  variables = init_variables(model, jax.random.key(0), config.data)
  embedder = inference.ReidEmbedder(model, variables, config, sharding.make_data_mesh())
  x = np.random.RandomState(1).randint(0, 256, (3, 64, 32, 3)).astype(np.uint8)
  want = embedder.embed(x)
  exported = export.export_stablehlo(embedder, str(tmp_path / "duatm.jaxexport"))
  got = export.load_stablehlo(str(tmp_path / "duatm.jaxexport")).call(x)
  assert sorted(got) == sorted(want) and "global" in got
  for key in want:
    np.testing.assert_allclose(np.asarray(got[key], np.float64),
                               np.asarray(want[key], np.float64), rtol=1e-5, atol=1e-5)
  assert exported.in_avals[0].dtype == np.uint8


def test_progress_bar_on_a_terminal_and_log_lines_otherwise(tmp_path, capsys, monkeypatch):
  from reidjax.train import progress

  def run(bar):
    logger = progress.ProgressLogger(str(tmp_path), total_steps=10, start_step=2,
                                     global_batch_size=8, every_steps=4, bar=bar)
    for step in range(3, 11):
      logger.update(step, {"loss": 1.0 / step, "lr": 0.5})
    logger.close()
    return capsys.readouterr().err

  err = run(bar=True)
  assert "10/10" in err and "step/s" in err and "loss=0.1056" in err  # tqdm bar; mean of steps 9, 10
  monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
  assert not progress.interactive()
  rows = _jsonl(tmp_path / "train_metrics.jsonl")
  assert [r["step"] for r in rows] == [4, 8, 10]  # logging steps and the last one
  np.testing.assert_allclose(rows[0]["loss"], np.mean([1 / 3, 1 / 4]))
