"""DuATM model: full-size shapes and parameters, sequence extraction, the
training/inference paths against the NumPy reference, the objective."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from reidjax import models
from reidjax.models import duatm
from tests.layers import duatm_reference as ref

_TINY_BACKBONE = dict(name="densenet121", growth_rate=4, block_config=(1, 1, 1, 1),
                      num_init_features=8)


def _config(video=False, matching="full", dim=8, **backbone):
  return ml_collections.ConfigDict(dict(
      name="duatm", dtype="float32", dim=dim, video=video, matching=matching,
      corruption_probability=0.2,
      backbone={"name": "densenet121", **backbone}))


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def test_full_size_image_shapes_and_parameter_count():
  model = models.build_model(_config(dim=256), num_classes=751)
  images = jax.ShapeDtypeStruct((2, 256, 128, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), {"images": x}), images)
  out = jax.eval_shape(lambda v, x: model.apply(v, {"images": x}), variables, images)
  chex.assert_shape(out["sequence"], (2, 32, 256))  # the 8 x 4 Block-4 map
  chex.assert_shape(out["distances"], (2, 2))
  chex.assert_shape(out["logits"], (2, 751))
  # DenseNet-121 features + FC 1024 -> 256 + transform W, b (256 x 256) and its
  # BN scale/shift + the classifier's BN scale and bias-free weights.
  expected = (6_953_856 + (1024 * 256 + 256) + (256 * 256 + 256 + 2 * 256)
              + 256 + 256 * 751)
  assert _count(variables["params"]) == expected
  items = jax.eval_shape(lambda v, x: model.apply(v, {"images": x}, method="embed"),
                         variables, images)
  chex.assert_shape([items["x"], items["q"], items["x_bar"]], (2, 32, 256))
  chex.assert_shape(items["gram"], (2, 32, 32))
  chex.assert_shape(items["global"], (2, 256))
  assert models.model_kind(model) == models.PAIR


def test_full_size_video_shapes_and_parameter_count():
  model = models.build_model(_config(dim=256, video=True), num_classes=625)
  clips = jax.ShapeDtypeStruct((2, 16, 128, 64, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), {"images": x}), clips)
  out = jax.eval_shape(lambda v, x: model.apply(v, {"images": x}), variables, clips)
  chex.assert_shape(out["sequence"], (2, 16, 256))  # one vector per frame
  # Two LSTMs of 128 units on 1024 inputs: 4 gates x (input + hidden + bias).
  lstm = 2 * 4 * (1024 * 128 + 128 * 128 + 128)
  assert _count(variables["params"]) == (6_953_856 + lstm + (256 * 256 + 256 + 512)
                                          + 256 + 256 * 625)


@pytest.fixture(scope="module")
def tiny_image_model():
  model = models.build_model(_config(**_TINY_BACKBONE), num_classes=3)
  images = jax.random.normal(jax.random.PRNGKey(1), (5, 64, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), {"images": images})
  # Non-trivial BN statistics in the matcher so q is not the init's.
  variables = jax.tree.map(lambda x: x, variables)
  stats = variables["batch_stats"]["matcher"]["norm"]
  stats["mean"] = stats["mean"] + 0.1
  stats["var"] = stats["var"] * 1.5
  return model, _spread(model, variables, images), images


def _spread(model, variables, images):
  """A random network maps every image to nearly the same direction (distances
  ~1e-3, where float32 round-off alone is ~1e-5): centre the projection so
  that the sequences spread and the distances are O(1)."""
  raw = model.apply(variables, {"images": images}, method="features")["sequence"]
  project = variables["params"]["project"]
  project["bias"] = project["bias"] - raw.mean(axis=(0, 1))
  return variables


def test_sequence_is_the_projected_unit_norm_feature_map(tiny_image_model):
  model, variables, images = tiny_image_model
  x, mask = model.apply(variables, images, method="sequence")
  chex.assert_shape(x, (5, 2, 8))  # 64 x 32 input -> 2 x 1 map, S = 2
  assert bool(mask.all())
  np.testing.assert_allclose(np.linalg.norm(x, axis=-1), 1.0, rtol=1e-5)
  # Independent: backbone map, row-major positions, W x + b, normalise.
  fmap = model.backbone.apply({"params": variables["params"]["backbone"],
                               "batch_stats": variables["batch_stats"]["backbone"]},
                              images, train=False)["block4"]
  p = variables["params"]["project"]
  seq = np.asarray(fmap, np.float64).reshape(5, 2, -1) @ np.asarray(p["kernel"]) + p["bias"]
  seq /= np.linalg.norm(seq, axis=-1, keepdims=True)
  np.testing.assert_allclose(x, seq, atol=1e-5)


def test_embed_and_pair_distance_match_the_numpy_equations(tiny_image_model):
  model, variables, images = tiny_image_model
  items = model.apply(variables, {"images": images}, method="embed")
  dist = np.asarray(model.apply(variables, items, items, method="pair_distance"))
  x = np.asarray(model.apply(variables, images, method="sequence")[0], np.float64)
  stats = variables["batch_stats"]["matcher"]["norm"]
  expected = ref.distance_matrix(list(x), list(x), variables["params"]["matcher"],
                                 np.asarray(stats["mean"]), np.asarray(stats["var"]))
  # Off the diagonal to float32 precision; on it the self-distance is the
  # safe square root of rounding noise, so only "small" is asserted.
  off = ~np.eye(len(dist), dtype=bool)
  np.testing.assert_allclose(dist[off], expected[off], rtol=2e-5)
  # Self-distances: ~0 (round-off under the safe square root) where the
  # ablation matches a sequence to itself exactly; "inter" does not.
  np.testing.assert_allclose(np.diag(dist), np.diag(expected), atol=2e-3)
  np.testing.assert_allclose(dist, dist.T, atol=1e-6)  # symmetric in (a, b)
  # The inference forward pass gives the same all-pairs matrix.
  out = model.apply(variables, {"images": images}, train=False)
  np.testing.assert_allclose(out["distances"], dist, atol=1e-5)
  # "global": the normalised mean of the sequence.
  mean = x.mean(axis=1)
  np.testing.assert_allclose(items["global"],
                             mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("matching", ["intra", "inter", "avepool"])
def test_ablation_switches(matching):
  model = models.build_model(_config(matching=matching, **_TINY_BACKBONE), num_classes=3)
  images = jax.random.normal(jax.random.PRNGKey(2), (3, 64, 32, 3))
  variables = _spread(model, model.init(jax.random.PRNGKey(0), {"images": images}), images)
  dist = np.asarray(model.apply(variables, {"images": images}, train=False)["distances"])
  x = np.asarray(model.apply(variables, images, method="sequence")[0], np.float64)
  intra, inter = duatm.MATCHING[matching]
  if "matcher" in variables["params"]:
    stats = variables["batch_stats"]["matcher"]["norm"]
    expected = ref.distance_matrix(list(x), list(x), variables["params"]["matcher"],
                                   np.asarray(stats["mean"]), np.asarray(stats["var"]),
                                   intra=intra, inter=inter)
  else:  # avepool: no transform layer at all
    assert matching == "avepool"
    mean = x.mean(axis=1)
    expected = np.linalg.norm(mean[:, None] - mean[None], axis=-1)
  off = ~np.eye(len(dist), dtype=bool)
  np.testing.assert_allclose(dist[off], expected[off], rtol=2e-5)
  # Self-distances: ~0 (round-off under the safe square root) where the
  # ablation matches a sequence to itself exactly; "inter" does not.
  np.testing.assert_allclose(np.diag(dist), np.diag(expected), atol=2e-3)


def test_video_sequence_is_bilstm_of_frame_vectors():
  model = models.build_model(_config(video=True, **_TINY_BACKBONE), num_classes=3)
  clips = jax.random.normal(jax.random.PRNGKey(3), (2, 5, 32, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), {"images": clips})
  x, mask = model.apply(variables, clips, method="sequence")
  chex.assert_shape(x, (2, 5, 8))
  assert bool(mask.all())
  np.testing.assert_allclose(np.linalg.norm(x, axis=-1), 1.0, rtol=1e-5)
  # Bidirectional, checked on the states before the L2 normalisation (which
  # mixes the halves): the forward half (first D/2) of state t sees frames
  # <= t only, the backward half frames >= t only.
  raw = lambda c: np.asarray(model.apply(variables, {"images": c}, method="features")["sequence"])
  h = raw(clips)
  last = raw(clips.at[:, -1].set(0.0))
  np.testing.assert_array_equal(last[:, :-1, :4], h[:, :-1, :4])  # forward: blind to the future
  assert np.abs(last[:, 0, 4:] - h[:, 0, 4:]).max() > 1e-4  # backward: reaches state 0
  first = raw(clips.at[:, 0].set(0.0))
  np.testing.assert_array_equal(first[:, 1:, 4:], h[:, 1:, 4:])  # backward: blind to the past
  assert np.abs(first[:, -1, :4] - h[:, -1, :4]).max() > 1e-4  # forward: reaches state T-1
  # Each clip is processed on its own: the second clip's sequence does not
  # depend on the first clip (frames are not mixed across the batch).
  other = clips.at[0].set(0.0)
  z, _ = model.apply(variables, other, method="sequence")
  np.testing.assert_allclose(z[1], x[1], atol=1e-5)


def test_objective_is_the_weighted_sum_of_the_three_losses():
  rng = np.random.default_rng(0)
  pids = np.repeat(np.arange(3), 2)
  d = rng.uniform(0.1, 1.0, (6, 6))
  distances = (d + d.T) / 2 * (1 - np.eye(6))
  seq = rng.normal(size=(6, 4, 5))
  seq /= np.linalg.norm(seq, axis=-1, keepdims=True)
  logits = rng.normal(size=(6, 3))
  outputs = {"distances": jnp.asarray(distances, jnp.float32),
             "sequence": jnp.asarray(seq, jnp.float32),
             "mask": jnp.ones((6, 4), bool), "logits": jnp.asarray(logits, jnp.float32)}
  config = ml_collections.ConfigDict(dict(triplet_margin=0.2, triplet_weight=1.0,
                                          decorrelation_weight=0.1, ce_weight=0.5,
                                          label_smoothing=0.0))
  total, metrics = duatm.duatm_objective(outputs, {"pids": jnp.asarray(pids)}, config)
  # NumPy: batch-hard triplet, Eq. 7 and softmax cross-entropy.
  triplet = np.mean([max(0.0, 0.2 + max(distances[a, p] for p in range(6)
                                        if pids[p] == pids[a] and p != a)
                         - min(distances[a, n] for n in range(6) if pids[n] != pids[a]))
                     for a in range(6)])
  decor = np.mean([np.sum((np.eye(4) - s @ s.T) ** 2) / 16 for s in seq])
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  ce = -np.mean(log_p[np.arange(6), pids])
  np.testing.assert_allclose(metrics["triplet"], triplet, rtol=1e-5)
  np.testing.assert_allclose(metrics["decorrelation"], decor, rtol=1e-5)
  np.testing.assert_allclose(metrics["ce"], ce, rtol=1e-5)
  np.testing.assert_allclose(total, triplet + 0.1 * decor + 0.5 * ce, rtol=1e-5)


def test_training_logits_use_a_random_convex_combination(tiny_image_model):
  model, variables, images = tiny_image_model
  out, _ = model.apply(variables, {"images": images}, train=True, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.PRNGKey(7)})
  x = np.asarray(out["sequence"], np.float64)  # (5, 2, 8)
  z = np.asarray(out["pooled"], np.float64)
  kernel = np.asarray(variables["params"]["classifier"]["kernel"])
  scale = np.asarray(variables["params"]["neck"]["scale"])
  # BatchNorm (batch statistics in training, no shift), then the classifier.
  normed = (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5) * scale
  np.testing.assert_allclose(out["logits"], normed @ kernel, atol=1e-5)
  weights = []
  for b in range(len(x)):  # z_b = sum_i w_i x_b^i: recover w by least squares.
    w, *_ = np.linalg.lstsq(x[b].T, z[b], rcond=None)
    np.testing.assert_allclose(x[b].T @ w, z[b], atol=1e-5)
    weights.append(w)
  weights = np.array(weights)
  assert (weights > -1e-5).all()
  np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-5)
  assert np.abs(weights - 0.5).max() > 0.05  # not the plain average
  # Another key, other weights; at test time, plain averaging.
  other, _ = model.apply(variables, {"images": images}, train=True, mutable=["batch_stats"],
                         rngs={"dropout": jax.random.PRNGKey(8)})
  assert np.abs(np.asarray(other["pooled"]) - z).max() > 1e-3
  x_eval = np.asarray(model.apply(variables, images, method="sequence")[0])
  np.testing.assert_allclose(model.apply(variables, {"images": images})["pooled"],
                             x_eval.mean(1), atol=1e-6)


def test_bad_settings_are_clear_errors():
  with pytest.raises(ValueError, match="model.matching"):
    models.build_model(_config(matching="both", **_TINY_BACKBONE), 3).init(
        jax.random.PRNGKey(0), {"images": jnp.zeros((1, 32, 32, 3))})
  with pytest.raises(ValueError, match="even"):
    models.build_model(_config(video=True, dim=7, **_TINY_BACKBONE), 3).init(
        jax.random.PRNGKey(0), {"images": jnp.zeros((1, 2, 32, 32, 3))})


def test_plain_linear_classifier_without_batchnorm():
  config = _config(**_TINY_BACKBONE)
  config.classifier_bn = False
  model = models.build_model(config, num_classes=3)
  images = jax.random.normal(jax.random.PRNGKey(4), (2, 64, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), {"images": images})
  assert "neck" not in variables["params"]
  out = model.apply(variables, {"images": images})
  np.testing.assert_allclose(
      out["logits"], np.asarray(out["pooled"]) @ np.asarray(variables["params"]["classifier"]["kernel"]),
      atol=1e-6)


def test_embed_is_prepare_of_features_and_mirrored_features_realign_columns(tiny_image_model):
  model, variables, images = tiny_image_model
  inputs = {"images": images}
  features = model.apply(variables, inputs, method="features")
  embed = model.apply(variables, inputs, method="embed")
  prepared = model.apply(variables, features, method="prepare")
  for key in embed:
    np.testing.assert_array_equal(np.asarray(prepared[key]), np.asarray(embed[key]))
  # The normalised features are the sequence the training path matches.
  x, _ = model.apply(variables, images, method="sequence")
  raw = np.asarray(features["sequence"])
  np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=-1, keepdims=True), x,
                             rtol=1e-5, atol=1e-6)
  # A mirrored image's sequence, read with mirrored=True, has its map columns
  # put back: position (r, c) holds the mirror's (r, w - 1 - c). 64x32 -> 2x1
  # Block-4 map for this tiny DenseNet, so use a wider input to have w > 1.
  wide = {"images": jax.random.normal(jax.random.PRNGKey(5), (2, 64, 64, 3))}
  mirrored = {"images": wide["images"][:, :, ::-1]}
  plain = np.asarray(model.apply(variables, mirrored, method="features")["sequence"])
  back = np.asarray(model.apply(variables, mirrored, mirrored=True,
                                method="features")["sequence"])
  h, w = 2, 2
  assert plain.shape[1] == h * w
  np.testing.assert_array_equal(back.reshape(2, h, w, -1),
                                plain.reshape(2, h, w, -1)[:, :, ::-1])
