"""FGRA: full-size shapes and parameter counts, Table 2 switches, clip
properties, the objective (Eq. 13), the configs and a tiny train.py run."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from configs import fgra as fgra_config
from reidjax import losses, models
from reidjax.data import synthetic_video
from reidjax.models import fgra

RESNET50 = 23_508_032  # torchvision ResNet-50 without fc
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(backbone=None, **model):
  c = fgra_config.get_config("mars").model
  c.backbone.update(backbone or {})
  c.update(model)
  return c


def _tiny(**model):
  # 64 x 32 clips, width 4, blocks 1-1-1-1: 4 x 2 maps of 128 channels.
  return models.build_model(_config({"stage_sizes": (1, 1, 1, 1), "width": 4},
                                    reduced_features=8, **model), num_classes=5)


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def _eval_shape(model, clips):
  x = jax.ShapeDtypeStruct(clips, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), {"images": x}), x)
  outputs = jax.eval_shape(lambda v, x: model.apply(v, {"images": x}), variables, x)
  return variables, outputs


def _head(classes, width=2048):
  return width + width * classes  # BNNeck scale + bias-free classifier


def test_full_size_shapes_and_parameter_count():
  model = models.build_model(_config(), num_classes=625)
  variables, outputs = _eval_shape(model, (2, 6, 256, 128, 3))
  chex.assert_shape([outputs["features"], outputs["embeddings"]], (2, 2048))  # [f_g, f_l]
  chex.assert_shape(outputs["logits"], (2, 625))
  chex.assert_shape(outputs["consistency"], (2,))
  p = variables["params"]
  c, r, d = 2048, 4, 1024
  expected = {
      "backbone": RESNET50,
      "global_attention": c + 1,  # one score per frame
      "global_reduce": c * d + d,  # 1x1 conv 2048 -> 1024
      "template_kernel": r * c * c, "template_bias": r * c,  # one 1x1 conv per region
      "gam": 2 * c,  # the BatchNorm on the similarity maps (scale, bias)
      "spatial_attention": (3 * c + 1) + 2 + (c * d + d),  # Conv1d k3 C->1, BN(1), 1x1
      "bnneck": c, "classifier": c * 625}
  assert {k: _count(v) for k, v in p.items()} == expected
  assert _count(p) == 45_784_132
  # The alignment maps at full size: (B, T, N_s, 16, 8, 2048) (last stride 1).
  aux = jax.eval_shape(lambda v, x: model.apply(v, {"images": x}, method="alignment_outputs"),
                       variables, jax.ShapeDtypeStruct((2, 6, 256, 128, 3), jnp.float32))
  chex.assert_shape(aux["maps"], (2, 6, 4, 16, 8, 2048))
  chex.assert_shape(aux["responses"], (2, 6, 4, 16, 8))
  chex.assert_shape(aux["temporal_weights"], (2, 6, 4, 2048))
  chex.assert_shape(aux["region_weights"], (2, 4))


@pytest.mark.parametrize("row, features, scopes", [
    ("avg", 1024, {"local_reduce": 4 * 2048 * 1024 + 1024}),
    ("gb", 1024, {"global_attention": 2049, "global_reduce": 2048 * 1024 + 1024}),
    ("gb_ram_ta", 2048, {"local_attention": 2049, "gam": 4096}),
])
def test_table2_rows_at_full_size(row, features, scopes):
  config = fgra_config.get_config(f"mars,{row}")
  model = models.build_model(config.model, num_classes=10)
  variables, outputs = _eval_shape(model, (1, 6, 256, 128, 3))
  chex.assert_shape(outputs["features"], (1, features))
  counts = {k: _count(v) for k, v in variables["params"].items()}
  for scope, count in scopes.items():
    assert counts[scope] == count, scope
  if row == "avg":  # no global branch, no alignment: backbone, stripes, head only
    assert set(counts) == {"backbone", "local_reduce", "bnneck", "classifier"}
    assert config.loss.consistency_weight == 0.0


def _clips(seed, t=4):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(2, t, 64, 32, 3)), jnp.float32)


def _trained_stats(model, clips):
  """Variables after one training-mode pass, so inference BatchNorms are not trivial."""
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), {"images": clips})
  _, updates = jax.jit(lambda v: model.apply(v, {"images": clips}, train=True,
                                             mutable=["batch_stats"]))(variables)
  return {**variables, **updates}


def test_a_clip_of_one_repeated_frame_embeds_like_that_frame():
  """Circular padding of a one-frame tracklet repeats the frame: the clip's
  feature f_s (so its embedding) is the one-frame clip's (uniform temporal
  weights, zero consistency). The layers' version: test_alignment.py."""
  model = _tiny()
  one = _clips(0)[:, :1]
  v = jax.jit(model.init)(jax.random.PRNGKey(0), {"images": one})
  outputs = jax.jit(lambda x: model.apply(v, {"images": x}, method="alignment_outputs"))
  single = outputs(one)["features"]
  aux = outputs(jnp.repeat(one, 6, axis=1))
  np.testing.assert_allclose(aux["features"], single, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(aux["temporal_weights"], 1.0 / 6, rtol=1e-5)
  np.testing.assert_allclose(aux["consistency"], 0.0, atol=1e-6)


def test_the_first_frame_is_the_reference():
  """Frames after the first are aggregated without order: shuffling them keeps
  the embedding; a different first frame (another reference) changes it."""
  model = _tiny()
  clips = _clips(1)
  v = _trained_stats(model, clips)
  embed = jax.jit(lambda x: model.apply(v, {"images": x}, method="embed"))
  base = embed(clips)
  np.testing.assert_allclose(embed(clips[:, [0, 3, 1, 2]]), base, rtol=1e-4, atol=1e-5)
  assert float(jnp.abs(embed(clips[:, [1, 0, 2, 3]]) - base).max()) > 1e-3


def test_correlation_forms_give_the_same_model():
  clips = _clips(2)
  conv, einsum = _tiny(correlation="conv"), _tiny(correlation="einsum")
  v = _trained_stats(conv, clips)
  np.testing.assert_allclose(conv.apply(v, {"images": clips}, method="embed"),
                             einsum.apply(v, {"images": clips}, method="embed"),
                             rtol=1e-5, atol=1e-5)


def test_objective_is_eq13():
  model = _tiny()
  clips = _clips(3)
  v = model.init(jax.random.PRNGKey(0), {"images": clips})
  out, _ = model.apply(v, {"images": clips}, train=True, mutable=["batch_stats"])
  batch = {"pids": jnp.asarray([0, 1])}
  cfg = fgra_config.get_config("mars").loss
  total, metrics = fgra.fgra_objective(out, batch, cfg)
  ce, _ = losses.cross_entropy_with_label_smoothing(out["logits"], batch["pids"],
                                                    label_smoothing=0.0)
  triplet, _ = losses.batch_hard_triplet_loss(out["features"], batch["pids"], margin=0.5)
  reg = float(np.mean(out["consistency"]))  # Eq. 12: the mean of Eq. 3 over the clips
  assert reg > 0
  np.testing.assert_allclose(total, ce + triplet + 5e-4 * reg, rtol=1e-5)
  np.testing.assert_allclose(metrics["consistency"], reg, rtol=1e-6)
  cfg.consistency_weight = 0.0
  np.testing.assert_allclose(fgra.fgra_objective(out, batch, cfg)[0], ce + triplet, rtol=1e-5)


def test_bad_options_are_clear_errors():
  x = {"images": jnp.zeros((1, 2, 64, 32, 3))}
  with pytest.raises(ValueError, match="needs model.region_alignment=True"):
    _tiny(region_alignment=False).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="temporal_aggregation must be one of"):
    _tiny(temporal_aggregation="max").init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="video model"):
    _tiny(video=False).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="at least one branch"):
    _tiny(global_branch=False, local_branch=False).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="num_regions"):
    _tiny(num_regions=8).init(jax.random.PRNGKey(0), x)  # 4-row maps
  with pytest.raises(ValueError, match="video dataset"):
    fgra_config.get_config("market1501")
  with pytest.raises(ValueError, match="unknown Table 2 row"):
    fgra_config.get_config("mars,full_model")


@pytest.mark.parametrize("dataset", common.VIDEO_DATASETS)
def test_paper_recipe(dataset):
  c = fgra_config.get_config(dataset)
  assert c.model.name == "fgra" and models.get_objective("fgra") is fgra.fgra_objective
  assert c.model.video and c.model.num_regions == 4
  n = 4 if dataset == "synthetic_video" else 6  # the CPU quick start's shorter clips
  assert (c.data.clip_length, c.data.train_clip_strategy) == (n, "consecutive")
  # Test clips of N frames, adjacent ones overlapping by half.
  assert (c.data.test_clip_length, c.data.test_clip_strategy, c.data.test_clip_stride) == (
      n, "all", n // 2)
  c.data.clip_length = 8  # Fig. 4's sequence length: one switch for both
  assert c.data.test_clip_length == 8
  assert (c.eval.metric, c.eval.clip_pooling) == ("cosine", "mean")
  assert (c.loss.triplet_margin, c.loss.consistency_weight) == (0.5, 5e-4)
  if dataset == "synthetic_video":
    assert c.data.root == "data/synthetic_mars"  # the shared set
    assert tuple(c.model.backbone.stage_sizes) == (1, 1, 1, 1)
    return
  assert (c.data.num_identities, c.data.num_instances) == (16, 4)
  assert (c.data.crop, c.data.flip, c.data.random_erasing) == ("enlarge", True, 0.5)
  assert (c.data.height, c.data.width) == (256, 128)
  assert (c.optimizer.name, c.optimizer.lr, c.optimizer.weight_decay) == ("adam", 3e-4, 5e-4)
  assert (c.schedule.epochs, tuple(c.schedule.milestones), c.schedule.gamma) == (
      300, (100, 200), 0.1)
  assert c.loss.label_smoothing == 0.0 and c.model.backbone.stage_sizes == (3, 4, 6, 3)


def test_train_py_end_to_end_on_tiny_video(tmp_path):
  root = tmp_path / "MARS"
  synthetic_video.write_synthetic_mars(
      str(root), num_train_ids=4, num_test_ids=3, num_cameras=2, tracklets_per_id=2,
      min_frames=2, max_frames=7, height=32, width=16, num_distractor_tracklets=1,
      num_junk_tracklets=1)
  overrides = {
      "data.root": root, "data.height": 32, "data.width": 16, "data.pad": 2,
      "data.num_identities": 2, "data.num_instances": 2, "data.eval_batch_size": 4,
      "data.clip_length": 3, "data.test_clip_stride": 2, "data.epoch": "identities",
      "model.backbone.stage_sizes": "(1,1,1,1)", "model.backbone.width": 4,
      "model.backbone.from_scratch": True, "model.reduced_features": 8,
      "model.num_regions": 2, "schedule.epochs": 2, "schedule.milestones": "(1,)",
      "train.log_every_steps": 1}
  command = ([sys.executable, "train.py", "--config", "configs/fgra.py:mars",
              "--workdir", str(tmp_path / "wd")] + [f"--config.{k}={v}" for k, v in overrides.items()])
  run = subprocess.run(command, cwd=_ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                       capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-4000:]
  with open(tmp_path / "wd" / "train_metrics.jsonl") as f:
    lines = [json.loads(line) for line in f]
  assert [line["step"] for line in lines] == [1, 2, 3, 4]  # 4 ids / P2 = 2 steps an epoch
  assert all(np.isfinite(line["consistency"]) and line["consistency"] > 0 for line in lines)
  with open(tmp_path / "wd" / "results.json") as f:
    results = json.load(f)
  assert results["num_valid_queries"] + results["num_skipped_queries"] == 3
