"""The BNNeck baseline: full-size shapes and parameter count, tiny forward."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from reidjax import models
from reidjax.models import baseline


def _config(**backbone):
  backbone = {"name": "resnet50", "stage_sizes": (3, 4, 6, 3), "width": 64,
              "last_stride": 1, **backbone}
  return ml_collections.ConfigDict(dict(
      name="baseline", dtype="float32", embed_feature="bn", backbone=backbone))


def test_full_size_shapes_and_parameter_count():
  model = models.build_model(_config(), num_classes=751)
  images = jax.ShapeDtypeStruct((2, 256, 128, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), {"images": x}), images)
  outputs = jax.eval_shape(lambda v, x: model.apply(v, {"images": x}), variables, images)
  chex.assert_shape([outputs["features"], outputs["embeddings"]], (2, 2048))
  chex.assert_shape(outputs["logits"], (2, 751))
  count = sum(x.size for x in jax.tree.leaves(variables["params"]))
  # ResNet-50 without fc + BNNeck scale (no bias) + bias-free classifier.
  assert count == 23_508_032 + 2048 + 2048 * 751
  assert models.model_kind(model) == models.EMBEDDING


def test_tiny_forward_embed_is_bnneck_of_pooled_features():
  config = _config(stage_sizes=(1, 1, 1, 1), width=4)
  model = models.build_model(config, num_classes=5)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 32, 16, 3))
  variables = model.init(jax.random.PRNGKey(0), {"images": x})
  out = model.apply(variables, {"images": x}, train=False)
  emb = model.apply(variables, {"images": x}, method="embed")
  np.testing.assert_allclose(emb, out["embeddings"], rtol=1e-5, atol=1e-6)
  # Eval-mode BNNeck: (f - running_mean) / sqrt(running_var + eps) * scale.
  stats = variables["batch_stats"]["bnneck"]
  expected = ((out["features"] - stats["mean"]) / np.sqrt(stats["var"] + 1e-5)
              * variables["params"]["bnneck"]["scale"])
  np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["logits"], emb @ variables["params"]["classifier"]["kernel"],
                             rtol=1e-5, atol=1e-6)

  config.embed_feature = "pre_bn"
  pre = models.build_model(config, num_classes=5).apply(variables, {"images": x}, method="embed")
  np.testing.assert_allclose(pre, out["features"], rtol=1e-6)


def test_objective_sums_weighted_terms():
  outputs = {"features": jnp.array([[0.0], [1.0], [3.0], [5.0]]),
             "logits": jnp.zeros((4, 2))}
  batch = {"pids": jnp.array([0, 0, 1, 1])}
  cfg = ml_collections.ConfigDict(dict(label_smoothing=0.0, triplet_margin=1.5,
                                       ce_weight=2.0, triplet_weight=3.0))
  loss, metrics = baseline.baseline_objective(outputs, batch, cfg)
  # CE of uniform logits over 2 classes = ln 2; the triplet term is 0.5
  # (hand-computed in tests/test_losses.py).
  np.testing.assert_allclose(metrics["ce"], np.log(2), rtol=1e-6)
  np.testing.assert_allclose(metrics["triplet"], 0.5, rtol=1e-6)
  np.testing.assert_allclose(loss, 2 * np.log(2) + 3 * 0.5, rtol=1e-6)


def test_unknown_names_are_clear_errors():
  with pytest.raises(ValueError, match="known"):
    models.build_model(ml_collections.ConfigDict(dict(name="nope")), 3)
  with pytest.raises(ValueError, match="resnet50"):
    models.build_model(_config(name="vgg"), 3)


def test_misspelt_model_option_is_a_clear_error():
  config = _config(stage_sizes=(1, 1, 1, 1), width=4)
  config.embed_featur = "bn"
  with pytest.raises(ValueError, match=r"model\.embed_featur is not an option of model "
                     r"'baseline'.*accepted: \[.*'embed_feature'"):
    models.build_model(config, 3)


def test_model_of_your_own_by_module_path():
  config = _config(stage_sizes=(1, 1, 1, 1), width=4)
  config.name = "tests.models.camera_model:ENTRY"
  model = models.build_model(config, 3)
  assert type(model).__name__ == "CameraAwareBaseline"
  config.name = "tests.models.camera_model:CameraOffsets"
  with pytest.raises(ValueError, match="must be a reidjax.models.registry.ModelEntry"):
    models.build_model(config, 3)


def test_center_loss_adds_its_weighted_term_and_owns_the_centres():
  config = _config(stage_sizes=(1, 1, 1, 1), width=4)
  config.center_loss = True
  model = models.build_model(config, num_classes=3)
  x = {"images": jax.random.normal(jax.random.PRNGKey(1), (4, 32, 16, 3))}
  variables = model.init(jax.random.PRNGKey(0), x)
  centers = np.asarray(variables["params"]["centers"]["centers"])
  assert centers.shape == (3, 4 * 8 * 4)  # one centre per id, the width of f_t
  out = model.apply(variables, x)
  np.testing.assert_array_equal(out["centers"], centers)
  pids = jnp.array([0, 0, 2, 2])
  cfg = ml_collections.ConfigDict(dict(label_smoothing=0.0, triplet_margin=0.3,
                                       ce_weight=1.0, triplet_weight=1.0, center_weight=0.5))
  loss, metrics = baseline.baseline_objective(out, {"pids": pids}, cfg)
  f = np.asarray(out["features"], np.float64)
  center = np.mean(np.sum((f - centers[np.asarray(pids)]) ** 2, axis=1))  # BoT: batch mean
  np.testing.assert_allclose(metrics["center"], center, rtol=1e-5)
  np.testing.assert_allclose(loss, metrics["ce"] + metrics["triplet"] + 0.5 * center,
                             rtol=1e-5)
