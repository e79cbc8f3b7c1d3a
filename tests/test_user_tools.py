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


def test_export_stablehlo_matches_the_flax_model(run, tmp_path):
  import jax

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


def test_dcanet_exports_to_onnx_and_matches_the_flax_model(tmp_path):
  """DCANet (the baseline plus DCAMs, so it covers the baseline's ops too): the
  ONNX file of ``python -m reidjax.export`` in onnxruntime, against the Flax model."""
  import onnxruntime

  from configs import dcanet
  from reidjax import checkpoint, export, inference
  from reidjax.models import build_model

  config = dcanet.get_config("synthetic")  # 64 x 32, one DCAM after stage 3, K = 4
  config.model.backbone.width = 4
  config.model.num_classes = 5
  model = build_model(config.model, config.model.num_classes)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "workdir"), save_every_steps=1)
  ckpt.save(1, _random_variables(model, config.data), config, force=True)
  ckpt.wait()
  ckpt.close()
  onnx_path = tmp_path / "dcanet.onnx"
  export.main(["--workdir", str(tmp_path / "workdir"), "--format", "onnx",
               "--out", str(onnx_path)])
  embedder = inference.restore(str(tmp_path / "workdir"))
  session = onnxruntime.InferenceSession(str(onnx_path))
  (inp,) = session.get_inputs()
  assert inp.name == "images" and isinstance(inp.shape[0], str)  # dynamic batch
  rng = np.random.RandomState(0)
  for n in (3, 5):
    x = rng.randint(0, 256, (n, 64, 32, 3)).astype(np.uint8)
    want = embedder.embed(x)
    (got,) = session.run(None, {"images": x})
    assert got.shape == want.shape == (n, 128)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_dcam_stacked_blocks_equal_the_vmapped_modules_they_replace():
  """The DCAM's K attention blocks as stacked einsums (ONNX-convertible) give what
  K nn.vmap-ed nn.Conv / nn.Dense blocks give with the same parameters."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from reidjax.layers import dcam

  class VmappedSpatial(nn.Module):  # The previous implementation, block by block.
    hidden: int

    @nn.compact
    def __call__(self, f):
      x = nn.Conv(self.hidden, (1, 1), name="conv1")(f)
      return nn.Conv(1, (1, 1), name="conv2")(nn.relu(x))[..., 0]

  class VmappedChannel(nn.Module):
    hidden: int
    features: int

    @nn.compact
    def __call__(self, x):
      return nn.Dense(self.features, name="fc2")(nn.relu(nn.Dense(self.hidden, name="fc1")(x)))

  def vmapped(cls, k, **fields):
    return nn.vmap(cls, variable_axes={"params": 0}, split_rngs={"params": True},
                   in_axes=None, out_axes=0, axis_size=k)(**fields)

  k, rng = 4, np.random.default_rng(0)
  f = jnp.asarray(rng.standard_normal((2, 8, 4, 16)), jnp.float32)
  pooled = jnp.asarray(rng.standard_normal((2, 3, 4)), jnp.float32)
  for new, old, x in ((dcam.SpatialAttentionBlocks(k, hidden=3), vmapped(VmappedSpatial, k, hidden=3), f),
                      (dcam.ChannelAttentionBlocks(k, hidden=2, features=4),
                       vmapped(VmappedChannel, k, hidden=2, features=4), pooled)):
    params = old.init(jax.random.key(0), x)
    params = jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape), params)  # biases != 0
    assert (jax.tree.map(jnp.shape, new.init(jax.random.key(0), x))
            == jax.tree.map(jnp.shape, params))  # checkpoints keep their layout
    want = old.apply(params, x)
    np.testing.assert_allclose(new.apply(params, x), want, rtol=1e-5,
                               atol=1e-6 * float(jnp.abs(want).max()))


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


# --- Pose models (Attention-Driven ReID) and the paper figures -----------------
# A tiny attdriven checkpoint of random variables (figures and search need
# no training) on a tiny synthetic set with keypoints.


def _tiny_attdriven_config(root):
  from configs import attdriven
  config = attdriven.get_config("synthetic")
  config.data.root = str(root)
  config.data.synthetic.update(num_train_ids=4, num_test_ids=4, images_per_id=6,
                               num_distractors=2, num_junk=1)
  config.data.height, config.data.width = 32, 16
  config.data.parts.height, config.data.parts.width = 8, 16
  config.data.eval_batch_size = 16
  config.model.backbone.stage_widths = (2, 4, 4, 8)
  config.model.part_stage_widths = (2, 2, 4, 4)
  config.model.global_reduce, config.model.part_reduce = 8, 4
  # Intra-attention in Block 3 only: fewer ops to compile, a map still drawn.
  config.model.attention_stages, config.model.attention_pools = (3,), (1,)
  config.model.num_classes = 4
  return config


def _random_variables(model, data_config, seed=0):
  """Variables of ``model`` drawn in NumPy (shapes from ``jax.eval_shape``): a
  figure or a search needs valid variables, not trained ones, and this skips
  compiling the initialisers. Kernels ~ N(0, 1 / fan_in), so activations keep
  their scale; BatchNorm statistics (0, 1); biases 0, scales 1."""
  import jax

  from reidjax.models.variables import init_variables

  shapes = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), data_config))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if "mean" in name or "bias" in name:
      return np.zeros(leaf.shape, leaf.dtype)
    if "var" in name or "scale" in name:
      return np.ones(leaf.shape, leaf.dtype)
    fan_in = max(1, int(np.prod(leaf.shape[:-1])))
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def pose_run(tmp_path_factory):
  """(workdir, config, model, variables, dataset) of a saved random attdriven."""
  from reidjax import checkpoint
  from reidjax.data import datasets
  from reidjax.models import build_model

  base = tmp_path_factory.mktemp("pose")
  config = _tiny_attdriven_config(base / "market")
  dataset, _ = datasets.load_data(config.data)  # writes the set and its keypoints
  model = build_model(config.model, config.model.num_classes)
  variables = _random_variables(model, config.data)
  workdir = base / "workdir"
  ckpt = checkpoint.Checkpointer(str(workdir), save_every_steps=1)
  ckpt.save(1, variables, config, force=True)
  ckpt.wait()
  ckpt.close()
  return workdir, config, model, variables, dataset


def _expected_attdriven_figure(run, split, split_name, index):
  """The figure drawn directly: the item's file and its keypoints-file entry."""
  from reidjax.data import keypoints as keypoints_lib
  from reidjax.viz import attdriven, panels
  _, config, model, variables, _ = run
  path = split.paths[index]
  table = keypoints_lib.read_keypoints_file(
      keypoints_lib.split_keypoints_path(config.data, split_name))
  keypoints = table[os.path.basename(path)]
  assert keypoints[:, 2].max() > 0  # the pose path, not the stripes
  return np.asarray(attdriven.part_attention_figure(model, variables, panels.load_image(path),
                                                    keypoints, config.data, None))


def test_paper_figure_registry_covers_every_paper_but_the_baseline():
  from reidjax import viz
  from reidjax.models import registry
  from reidjax.viz import panels

  papers = set(registry.MODELS) - {"baseline"}
  assert papers <= set(viz.PAPER_FIGURES)
  for name, module in viz.PAPER_FIGURES.items():
    assert callable(__import__(module, fromlist=["paper_figure"]).paper_figure), name
  item = panels.Item(np.zeros((8, 4, 3), np.uint8))
  assert viz.paper_figure("baseline", None, None, None, item, item) is None


def test_tensorboard_holds_the_attdriven_figure(pose_run, tmp_path):
  """train.py's evaluate_and_write writes Attention-Driven's figure of the first
  shown query (with its keypoints) as an image event; TensorBoard's reader."""
  import importlib
  import io
  import jax
  from PIL import Image
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util

  from reidjax import inference, sharding
  from reidjax.data import build
  from reidjax.models import interface
  from reidjax.train import progress

  sys.path.insert(0, _ROOT)
  try:
    train = importlib.import_module("train")
  finally:
    sys.path.remove(_ROOT)
  workdir, config, model, variables, dataset = pose_run
  make_batches, test_clips = build.eval_inputs(
      config.data, dataset, dict.fromkeys(("train", "query", "gallery")),
      interface.input_fields(model), process_index=0, process_count=1)
  evaluator = inference.RecordingEvaluator.from_config(
      config.eval, model, sharding.make_data_mesh(), query=dataset.query,
      gallery=dataset.gallery, make_batches=make_batches, test_clips=test_clips)
  state = type("State", (), {"params": variables["params"],
                             "batch_stats": variables["batch_stats"]})()
  writer = progress.TensorBoardWriter(str(tmp_path))
  train.evaluate_and_write(evaluator, state, 7, writer, "attdriven", config.data)
  writer.close()
  jax.effects_barrier()

  events = event_accumulator.EventAccumulator(
      str(tmp_path), size_guidance={event_accumulator.TENSORS: 0})
  events.Reload()
  (event,) = events.Tensors("eval/attention")
  assert event.step == 7
  width, height, png = tensor_util.make_ndarray(event.tensor_proto)
  got = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
  want = _expected_attdriven_figure(pose_run, dataset.query, "query", 0)
  assert got.shape == want.shape == (int(height), int(width), 3)
  np.testing.assert_array_equal(got, want)


def test_evaluate_report_holds_the_attdriven_figure(pose_run, tmp_path):
  from PIL import Image

  from reidjax.evaluate.__main__ import evaluate_workdir

  workdir, _, _, _, dataset = pose_run
  result = evaluate_workdir(str(workdir), out=str(tmp_path / "report"), num_queries=2)
  metrics = json.load(open(tmp_path / "report" / "metrics.json"))
  assert metrics["attention_figure"] == result["attention_figure"]
  query_path, _ = metrics["attention_items"]
  index = list(dataset.query.paths).index(query_path)
  got = np.asarray(Image.open(result["attention_figure"]).convert("RGB"))
  np.testing.assert_array_equal(got, _expected_attdriven_figure(pose_run, dataset.query,
                                                                "query", index))


def test_pose_model_embeds_and_searches_with_keypoints_like_the_pipeline(pose_run, tmp_path,
                                                                          capsys, monkeypatch):
  """Attention-Driven ReID through ReidEmbedder and the search command: parts cut
  from keypoints exactly as the evaluation pipeline cuts them (Eq. 1-2);
  keypoints in file pixels follow the resize; no keypoints: a warning and the
  stripes; --keypoints on the command line."""
  import warnings

  import jax

  from reidjax import inference, search
  from reidjax.data import keypoints as keypoints_lib
  from reidjax.data import part_boxes, pipeline

  import reidjax

  workdir, config, _, variables, dataset = pose_run
  embedder = reidjax.restore(str(workdir))  # the research-code entry point
  config = embedder.config
  for restored, saved in zip(jax.tree.leaves(embedder.variables), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(restored, saved)
  query = dataset.query
  paths = list(query.paths)
  height, width = config.data.height, config.data.width
  table = keypoints_lib.read_keypoints_file(
      keypoints_lib.split_keypoints_path(config.data, "query"))
  keypoints = np.stack([table[os.path.basename(p)] for p in paths])
  sizes = inference.image_sizes(paths)
  assert (sizes != (height, width)).any()  # the keypoints must be rescaled
  scaled = keypoints * np.array([width, height, 1.0], np.float32) / np.concatenate(
      [sizes[:, ::-1], np.ones((len(paths), 1))], axis=1)[:, None].astype(np.float32)

  # The pipeline's parts (its own boxes and crops) through the model, against
  # embed on the pipeline's whole resized images with the rescaled keypoints.
  batch = lambda **kw: next(iter(pipeline.eval_batches(
      query, batch_size=len(query), height=height, width=width, **kw)))
  pose = batch(fields=("images", "parts"), keypoints=keypoints,
               parts=part_boxes.PartConfig.from_config(config.data.parts))
  want = np.asarray(embedder._embed(variables, {"images": pose["images"],  # pylint: disable=protected-access
                                                "parts": pose["parts"]}))
  got = embedder.embed(batch()["images"], keypoints=scaled)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

  # Files with keypoints in their own pixels = the resized images with the
  # rescaled keypoints.
  from_files = embedder.embed(paths, keypoints=keypoints)
  np.testing.assert_allclose(
      from_files, embedder.embed(inference.load_images(paths, height, width),
                                 keypoints=scaled), rtol=1e-5, atol=1e-6)

  # Without keypoints: a warning, and the stripes' features.
  with pytest.warns(UserWarning, match="stripes"):
    no_pose = embedder.embed(paths)
  config.data.parts.source = "stripes"
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      stripes = embedder.embed(paths, keypoints=keypoints)
  finally:
    config.data.parts.source = "pose"
  np.testing.assert_allclose(no_pose, stripes, rtol=1e-5, atol=1e-6)
  assert np.abs(no_pose - from_files).max() > 1e-4  # the keypoints matter

  # The command: --keypoints holds the query and a gallery folder's files but
  # one; the query's copy in the folder ranks first.
  folder = tmp_path / "gallery"
  folder.mkdir()
  for path in paths[1:6]:
    shutil.copy(path, folder / os.path.basename(path))
  shutil.copy(paths[0], folder / "zz_query_copy.jpg")
  entries = {os.path.basename(p): table[os.path.basename(p)] for p in paths[:5]}
  entries["zz_query_copy.jpg"] = table[os.path.basename(paths[0])]
  keypoints_lib.write_keypoints_file(str(tmp_path / "keypoints.json"), entries)
  out = tmp_path / "ranked.png"
  # The command's own restore is tested above (baseline); here it gets this
  # embedder, so the model is not compiled twice.
  monkeypatch.setattr(inference, "restore", lambda w, step=None: embedder)
  with pytest.warns(UserWarning, match="no keypoints for 1 of the 6 images"):
    search.main(["--workdir", str(workdir), "--query", paths[0], "--gallery", str(folder),
                 "--keypoints", str(tmp_path / "keypoints.json"), "--out", str(out)])
  assert os.path.getsize(out) > 1000
  rank, distance, first = capsys.readouterr().out.splitlines()[0].split()
  assert rank == "1" and float(distance) < 1e-5 and first.endswith("zz_query_copy.jpg")
