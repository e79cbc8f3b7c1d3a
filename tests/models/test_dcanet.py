"""DCANet: full-size shapes and parameter counts, DCAM placement, video, objective."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import dcanet as dcanet_config
from reidjax import losses, models
from reidjax.layers import dcam
from reidjax.models import baseline, dcanet

RESNET50 = 23_508_032  # torchvision ResNet-50 without fc


def _config(backbone=None, **model):
  backbone = {"name": "resnet50", "stage_sizes": (3, 4, 6, 3), "width": 64,
              "last_stride": 1, **(backbone or {})}
  return ml_collections.ConfigDict(dict(name="dcanet", dtype="float32", backbone=backbone,
                                        **model))


def _tiny(**model):
  # 64 x 32 input: stage maps 16x8 (1), 8x4 (2), 4x2 (3), 4x2 (4); channels
  # 16, 32, 64, 128 at width 4.
  return models.build_model(_config({"stage_sizes": (1, 1, 1, 1), "width": 4},
                                    **{"num_blocks": 2, "spatial_reduction": 4,
                                       "channel_reduction": 2, **model}), num_classes=5)


def _dcam_parameters(channels, k, spatial_reduction=16, channel_reduction=16):
  """Parameters of one DCAM, counted from the paper's layers (module doc)."""
  hidden, part = channels // spatial_reduction, channels // k
  fc_hidden = max(part // channel_reduction, 1)
  spatial = k * (channels * hidden + hidden + hidden + 1)  # conv1x1 -> conv1x1 to 1 map
  reduction = channels * part + part  # conv1x1 C -> C/K
  channel = k * (part * fc_hidden + fc_hidden + fc_hidden * part + part)  # FC_k
  discriminators = (channels * k + k) + (part * k + k)
  return spatial + reduction + channel + discriminators


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("stages, extra", [((3,), 683_224), ((2, 3, 4), 3_566_824)])
def test_full_size_shapes_and_parameter_count(stages, extra):
  model = models.build_model(_config(dcam_stages=stages, num_blocks=8), num_classes=751)
  images = jax.ShapeDtypeStruct((2, 256, 128, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), {"images": x}),
                             images)
  outputs = jax.eval_shape(lambda v, x: model.apply(v, {"images": x}), variables, images)
  chex.assert_shape([outputs["features"], outputs["embeddings"]], (2, 2048))
  chex.assert_shape(outputs["logits"], (2, 751))
  # Stage maps at 256 x 128: 32x16x512 (2), 16x8x1024 (3), 16x8x2048 (4); K = 8.
  maps = {2: (32, 16, 512), 3: (16, 8, 1024), 4: (16, 8, 2048)}
  assert set(outputs["dcam"]) == {f"stage{s}" for s in stages}
  for s in stages:
    h, w, c = maps[s]
    aux = outputs["dcam"][f"stage{s}"]
    chex.assert_shape(aux["spatial_attention"], (2, 8, h, w))
    chex.assert_shape(aux["spatial_pooled"], (2, 8, c))
    chex.assert_shape(aux["channel_attention"], (2, 8, c // 8))
    chex.assert_shape([aux["spatial_logits"], aux["channel_logits"]], (2, 8, 8))
    assert _count(variables["params"][f"dcam_stage{s}"]) == _dcam_parameters(c, 8)
  params = variables["params"]
  assert sum(_dcam_parameters(maps[s][2], 8) for s in stages) == extra
  # ResNet-50 + the baseline's head (BNNeck scale, bias-free classifier) + DCAMs.
  assert _count(params["backbone"]) == RESNET50
  assert _count(params) == RESNET50 + 2048 + 2048 * 751 + extra
  # The backbone scope is exactly the baseline's, so torchvision weights load.
  reference = models.build_model(
      ml_collections.ConfigDict(dict(name="baseline", dtype="float32",
                                     backbone=_config().backbone)), num_classes=751)
  ref_vars = jax.eval_shape(lambda x: reference.init(jax.random.PRNGKey(0), {"images": x}),
                            images)
  for collection in ("params", "batch_stats"):
    assert (jax.tree.map(lambda x: x.shape, variables[collection]["backbone"])
            == jax.tree.map(lambda x: x.shape, ref_vars[collection]["backbone"]))
  assert models.model_kind(model) == models.EMBEDDING


def test_dcam_output_feeds_the_next_stage_and_embed_is_the_bnneck():
  model = _tiny()
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 64, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), {"images": x})
  out = model.apply(variables, {"images": x})
  # Independently: the plain backbone's stage-3 map, a standalone DCAM with the
  # model's dcam_stage3 parameters, then stage 4 and global average pooling.
  stage3 = model.apply(variables, x, method=lambda m, x: m.backbone(x, train=False)["stage3"])
  plain4 = model.apply(variables, x, method=lambda m, x: m.backbone(x, train=False)["stage4"])
  standalone = dcam.DCAM(num_blocks=2, spatial_reduction=4, channel_reduction=2)
  aligned, aux = standalone.apply({"params": variables["params"]["dcam_stage3"]}, stage3)
  stage4 = model.apply(variables, aligned, method=lambda m, y: m.backbone.stage(4, y, False))
  np.testing.assert_allclose(out["features"], stage4.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(out["features"]) - np.asarray(plain4.mean(axis=(1, 2)))).max() > 1e-3
  np.testing.assert_allclose(out["dcam"]["stage3"]["spatial_attention"],
                             aux["spatial_attention"], rtol=1e-5)
  emb = model.apply(variables, {"images": x}, method="embed")
  np.testing.assert_allclose(emb, out["embeddings"], rtol=1e-5, atol=1e-6)
  stats = variables["batch_stats"]["bnneck"]
  expected = ((out["features"] - stats["mean"]) / np.sqrt(stats["var"] + 1e-5)
              * variables["params"]["bnneck"]["scale"])
  np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["logits"], emb @ variables["params"]["classifier"]["kernel"],
                             rtol=1e-5, atol=1e-6)
  maps = model.apply(variables, x, method="dcam_outputs")
  np.testing.assert_allclose(maps["stage3"]["spatial_attention"], aux["spatial_attention"],
                             rtol=1e-5)


def test_every_stage_set_of_table_1_and_per_stage_k():
  x = jnp.zeros((2, 64, 32, 3))
  for stages in [(2,), (3,), (4,), (2, 3), (3, 4), (2, 3, 4)]:
    model = _tiny(dcam_stages=stages)
    variables = jax.eval_shape(lambda x, m=model: m.init(jax.random.PRNGKey(0), {"images": x}), x)
    assert sorted(k for k in variables["params"] if k.startswith("dcam")) == [
        f"dcam_stage{s}" for s in stages]
  model = _tiny(dcam_stages=(2, 3, 4), num_blocks_per_stage=(8, 4, 2))
  out = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0),
                                                        {"images": x})[0], x)
  assert [out["dcam"][f"stage{s}"]["spatial_attention"].shape[1] for s in (2, 3, 4)] == [8, 4, 2]
  # No DCAM at all: the baseline network.
  plain = _tiny(dcam_stages=())
  out = plain.init_with_output(jax.random.PRNGKey(0), {"images": x})[0]
  assert out["dcam"] == {}


def test_video_clip_features_are_the_mean_of_frame_features():
  image_model, video_model = _tiny(), _tiny(video=True)
  clips = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 64, 32, 3))
  variables = image_model.init(jax.random.PRNGKey(0), {"images": clips[:, 0]})
  out = video_model.apply(variables, {"images": clips})
  frames = image_model.apply(variables, {"images": clips.reshape(6, 64, 32, 3)})
  np.testing.assert_allclose(out["features"],
                             frames["features"].reshape(2, 3, -1).mean(axis=1),
                             rtol=1e-5, atol=1e-6)
  # The discriminant loss sees every frame: frame t of clip b at b * T + t.
  np.testing.assert_allclose(out["dcam"]["stage3"]["spatial_logits"],
                             frames["dcam"]["stage3"]["spatial_logits"], rtol=1e-5, atol=1e-6)
  emb = video_model.apply(variables, {"images": clips}, method="embed")
  np.testing.assert_allclose(emb, out["embeddings"], rtol=1e-5, atol=1e-6)


def test_train_mode_updates_batch_stats():
  model = _tiny(dcam_stages=(2, 3, 4))
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 64, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), {"images": x})
  out, updates = model.apply(variables, {"images": x}, train=True, mutable=["batch_stats"])
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
      variables["batch_stats"])
  before = variables["batch_stats"]["bnneck"]["mean"]
  after = updates["batch_stats"]["bnneck"]["mean"]
  np.testing.assert_allclose(after, 0.9 * before + 0.1 * out["features"].mean(axis=0),
                             rtol=1e-4, atol=1e-6)
  assert np.abs(np.asarray(after - before)).max() > 1e-4
  # Train-mode BNNeck normalises with the batch statistics.
  np.testing.assert_allclose(np.asarray(out["embeddings"]).mean(axis=0), 0.0, atol=1e-4)


def _batch():
  pids = jnp.array([0, 0, 1, 1, 2, 2])
  x = jax.random.normal(jax.random.PRNGKey(4), (6, 64, 32, 3)) + pids[:, None, None, None]
  return {"images": x, "pids": pids}


def test_objective_adds_half_the_discriminant_loss():
  model = _tiny()
  batch = _batch()
  variables = model.init(jax.random.PRNGKey(0), {"images": batch["images"]})
  out, _ = model.apply(variables, {"images": batch["images"]}, train=True,
                       mutable=["batch_stats"])
  cfg = ml_collections.ConfigDict(dict(label_smoothing=0.1, triplet_margin=0.3, ce_weight=1.0,
                                       triplet_weight=1.0, discriminant_weight=0.5))
  loss, metrics = dcanet.dcanet_objective(out, batch, cfg)
  ce, _ = losses.cross_entropy_with_label_smoothing(out["logits"], batch["pids"],
                                                    label_smoothing=0.1)
  triplet, _ = losses.batch_hard_triplet_loss(out["features"], batch["pids"], margin=0.3)
  aux = out["dcam"]["stage3"]
  l_dis = (dcam.discriminant_loss(aux["spatial_logits"])
           + dcam.discriminant_loss(aux["channel_logits"]))
  assert float(l_dis) > 0.1
  np.testing.assert_allclose(loss, ce + triplet + 0.5 * l_dis, rtol=1e-5)
  np.testing.assert_allclose(metrics["discriminant"], l_dis, rtol=1e-5)
  assert metrics["loss"] == loss
  # Table 3's "BS + DCAM": weight 0 is the baseline objective on DCANet's outputs.
  cfg.discriminant_weight = 0.0
  loss0, _ = dcanet.dcanet_objective(out, batch, cfg)
  base, _ = baseline.baseline_objective(out, batch, cfg)
  np.testing.assert_allclose(loss0, base, rtol=1e-6)


def test_objective_gradient_reaches_every_block_of_every_dcam():
  model = _tiny(dcam_stages=(2, 3, 4))
  batch = _batch()
  variables = model.init(jax.random.PRNGKey(0), {"images": batch["images"]})
  cfg = ml_collections.ConfigDict(dict(label_smoothing=0.1, triplet_margin=0.3, ce_weight=0.0,
                                       triplet_weight=0.0, discriminant_weight=0.5))

  def loss(params):  # the discriminant term alone
    out, _ = model.apply({**variables, "params": params}, {"images": batch["images"]},
                         train=True, mutable=["batch_stats"])
    return dcanet.dcanet_objective(out, batch, cfg)[0]

  grads = jax.jit(jax.grad(loss))(variables["params"])  # eager op-by-op takes a minute
  for stage in (2, 3, 4):
    for blocks in ("spatial_blocks", "channel_blocks"):
      for path, g in jax.tree_util.tree_leaves_with_path(grads[f"dcam_stage{stage}"][blocks]):
        if jax.tree_util.keystr(path) == "['conv2']['bias']":
          # Eq. 1's softmax over positions ignores a shift of the scores: this
          # gradient is 0 up to rounding (exactly 0 or ~1e-10).
          assert float(jnp.abs(g).max()) < 1e-7, (stage, blocks)
          continue
        assert all(float(jnp.abs(g[j]).max()) > 0 for j in range(2)), (stage, blocks, path)
  # It also trains the backbone below the DCAMs.
  assert float(jnp.abs(grads["backbone"]["layer1_0"]["conv1"]["kernel"]).max()) > 0


def test_bad_settings_are_clear_errors():
  x = {"images": jnp.zeros((1, 64, 32, 3))}
  with pytest.raises(ValueError, match=r"stage 3.*H = 4.*K = 8"):
    _tiny(num_blocks=8).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match=r"dcam_stages.*\(1, 3\)"):
    _tiny(dcam_stages=(1, 3)).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match=r"num_blocks_per_stage \(2, 2\).*\(2, 3, 4\)"):
    _tiny(dcam_stages=(2, 3, 4), num_blocks_per_stage=(2, 2)).init(jax.random.PRNGKey(0), x)
  densenet = _config({"name": "densenet121", "growth_rate": 4, "block_config": (1, 1, 1, 1),
                      "num_init_features": 8})
  del densenet.backbone.stage_sizes, densenet.backbone.width, densenet.backbone.last_stride
  with pytest.raises(ValueError, match="must be a ResNet"):
    models.build_model(densenet, 3).init(jax.random.PRNGKey(0), x)
  config = _config(dcam_stage=(3,))
  with pytest.raises(ValueError, match=r"model\.dcam_stage is not an option.*'dcam_stages'"):
    models.build_model(config, 3)


@pytest.mark.parametrize("arg", ["synthetic", "synthetic_video"])
def test_quick_start_configs_build_and_run(arg):
  config = dcanet_config.get_config(arg)
  model = models.build_model(config.model, num_classes=7)
  assert models.get_objective(config.model.name) is dcanet.dcanet_objective
  shape = ((2,) + ((config.data.clip_length,) if config.data.video else ())
           + (config.data.height, config.data.width, 3))
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  out = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0),
                                                        {"images": x})[0], x)
  # The tiny ResNet's stage-3 map at 64 x 32 is 4 x 2 (K = 4 divides it), 256 channels.
  frames = 2 * (config.data.clip_length if config.data.video else 1)
  chex.assert_shape(out["dcam"]["stage3"]["spatial_attention"], (frames, 4, 4, 2))
  chex.assert_shape(out["dcam"]["stage3"]["channel_attention"], (frames, 4, 64))
  chex.assert_shape(out["features"], (2, 512))
