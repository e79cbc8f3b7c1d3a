"""CACE-Net model: full-size shapes and parameter counts, the conditional
features against an independent NumPy computation of Eq. 2-4 and 7, the
per-image / per-pair split counted in the jaxpr, Eq. 8, the official
variant, and a tiny train.py run ranked two-stage."""

import functools
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cacenet as cacenet_config
from reidjax import models
from reidjax.layers.graph import PairGraph
from reidjax.models import cacenet
from tests.layers.test_dual_attention import _dot_flops

RESNET50 = 23_508_032  # torchvision ResNet-50 without fc
_TINY = {"stage_sizes": (1, 2, 2, 2), "width": 4}  # 64 x 32 -> 4 x 2 x 128 stage-4 map


def _config(variant="paper", backbone=None, **model):
  c = cacenet_config.get_config("market1501" + (",official" if variant == "official" else ""))
  c.model.backbone.update(backbone or {})
  c.model.update(model)
  return c.model


def _tiny(variant="paper", num_classes=5, **model):
  return models.build_model(_config(variant, _TINY, embed_dim=6, **model), num_classes)


def _apply(module, variables, *args, **kwargs):
  """``module.apply`` jitted: far faster on CPU than op-by-op dispatch."""
  return jax.jit(functools.partial(module.apply, **kwargs))(variables, *args)


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def _init(model, images):
  # Jitted: one compiled program is much faster on CPU than op-by-op dispatch.
  return jax.jit(model.init)({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                             {"images": images})


def _eval_shapes(model, size=(384, 128)):
  """(variables, training outputs, embed items) shapes, traced once."""
  def run(x):
    out, variables = model.init_with_output(
        {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, {"images": x})
    return variables, out, model.apply(variables, {"images": x}, method="embed")
  return jax.eval_shape(run, jax.ShapeDtypeStruct((2,) + size + (3,), jnp.float32))


def test_full_size_paper_shapes_and_parameter_count():
  model = models.build_model(_config(), num_classes=751)
  variables, out, items = _eval_shapes(model)
  e = 2048  # the config's embed_dim
  chex.assert_shape([out["features"], out["embeddings"]], (2, e))
  chex.assert_shape(out["logits"], (2, 751))
  chex.assert_shape(out["pair_features"], (2, 2, e))
  chex.assert_shape(out["pair_logits"], (2, 2, 751))
  # 384 x 128, last stride 1: a 24 x 8 x 2048 map, N = 192 nodes an image.
  chex.assert_shape(items["map"], (2, 192, 2048))
  chex.assert_shape(items["intra"], (2, 192, 192))
  chex.assert_shape(items["global"], (2, e))
  params = variables["params"]
  assert _count(params["backbone"]) == RESNET50
  # diag(W), diag(W') (Eq. 2-3); theta (Eq. 7, bias-free D x D); the 1x1 conv
  # (D x E + bias); two necks (scale only); the bias-free classifier.
  assert _count(params["correspondence"]) == 2 * 2048
  assert _count(params["graph_conv"]) == 2048 * 2048
  assert _count(params) == (RESNET50 + 2 * 2048 + 2048 * 2048 + (2048 * e + e)
                            + 2 * e + e * 751)
  assert models.model_kind(model) == models.PAIR


def test_full_size_official_shapes_and_parameter_count():
  model = models.build_model(_config("official"), num_classes=751)
  variables, out, items = _eval_shapes(model)
  chex.assert_shape([out["features"], out["embeddings"]], (2, 768))
  chex.assert_shape(out["pair_features"], (2, 2, 768))
  chex.assert_shape(out["pair_logits"], (2, 2, 751))
  assert set(items) == {"global"}  # ranked by the global embedding only
  params = variables["params"]

  def non_local(c):  # theta, phi, g: C -> C/16 with bias; output C/16 -> C with bias
    inner = c // 16
    return 3 * (c * inner + inner) + inner * c + c

  assert [_count(params[f"non_local{s}"]) for s in (2, 3, 4)] == [
      non_local(512), non_local(1024), non_local(2048)]
  assert _count(params["pair_graph"]) == 3 * 2048 * 128  # two embeddings + output, no bias
  assert _count(params["gem"]) == 1
  assert _count(params) == (RESNET50 + sum(non_local(c) for c in (512, 1024, 2048))
                            + 3 * 2048 * 128 + 1 + 2048 * 768 + 2 * 768 + 2 * 768 * 751)


@pytest.fixture(scope="module")
def paper():
  model = _tiny()
  images = jax.random.normal(jax.random.PRNGKey(3), (4, 64, 32, 3))
  variables = _init(model, images)
  # Non-trivial learned parts: W, W', necks' statistics and scales.
  variables = jax.tree.map(lambda x: x, variables)
  rng = np.random.default_rng(0)
  corr = variables["params"]["correspondence"]
  for k in ("intra", "inter"):
    corr[k]["weight"] = jnp.asarray(rng.uniform(-0.5, 1.5, corr[k]["weight"].shape), jnp.float32)
  for neck in ("neck", "pair_neck"):
    stats = variables["batch_stats"][neck]
    stats["mean"] = jnp.asarray(rng.normal(size=stats["mean"].shape), jnp.float32)
    stats["var"] = jnp.asarray(rng.uniform(0.5, 2.0, stats["var"].shape), jnp.float32)
  return model, variables, images


def _numpy_conditional(variables, x_u, x_v, mode="discrepancy", cross_image=True):
  """Independent float64 Eq. 2-4, 7 (or 6), GAP, 1x1 conv, pair neck: f(u|v), f(v|u)."""
  p, stats = variables["params"], variables["batch_stats"]["pair_neck"]
  w = np.asarray(p["correspondence"]["intra"]["weight"], np.float64)
  w2 = np.asarray(p["correspondence"]["inter"]["weight"], np.float64)
  x_u, x_v = np.asarray(x_u, np.float64), np.asarray(x_v, np.float64)
  s_uv = x_u @ np.diag(w2) @ x_v.T if cross_image else np.zeros((len(x_u), len(x_v)))
  a = np.maximum(np.block([[x_u @ np.diag(w) @ x_u.T, s_uv],
                           [s_uv.T, x_v @ np.diag(w) @ x_v.T]]), 0.0)
  d = a.sum(1)
  r = np.where(d > 1e-12, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
  a_hat = r[:, None] * a * r[None]
  x = np.concatenate([x_u, x_v])
  sign = -1.0 if mode == "discrepancy" else 1.0
  gcn = (x + sign * a_hat @ x) @ np.asarray(p["graph_conv"]["theta"]["kernel"], np.float64)
  n = len(x_u)
  out = []
  for half in (gcn[:n], gcn[n:]):
    f = half.mean(0) @ np.asarray(p["encoder"]["kernel"]) + np.asarray(p["encoder"]["bias"])
    out.append((f - np.asarray(stats["mean"])) / np.sqrt(np.asarray(stats["var"]) + 1e-5)
               * np.asarray(p["pair_neck"]["scale"]))
  return out


def test_conditional_features_match_numpy_eq_2_to_7(paper):
  model, variables, images = paper
  items = _apply(model, variables, {"images": images}, method="embed")
  f_ab, f_ba = _apply(model, variables, items, items, method="conditional_features")
  chex.assert_shape([f_ab, f_ba], (4, 4, 6))
  for u in range(4):
    for v in range(4):
      want_uv, want_vu = _numpy_conditional(variables, items["map"][u], items["map"][v])
      np.testing.assert_allclose(f_ab[u, v], want_uv, rtol=2e-4, atol=2e-4)
      np.testing.assert_allclose(f_ba[u, v], want_vu, rtol=2e-4, atol=2e-4)
  # The stage-2 distance: 1 - cos(f(u|v), f(v|u)), symmetric in (u, v).
  dist = np.asarray(_apply(model, variables, items, items, method="pair_distance"))
  a, b = np.asarray(f_ab, np.float64), np.asarray(f_ba, np.float64)
  cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
  np.testing.assert_allclose(dist, 1 - cos, atol=1e-5)
  np.testing.assert_allclose(dist, dist.T, atol=1e-5)
  # The training path computes the same f(u|v) (inference mode, same variables).
  out = _apply(model, variables, {"images": images})
  np.testing.assert_allclose(out["pair_features"], f_ab, rtol=1e-4, atol=1e-4)
  # The pooled shortcut equals GAP of the full GCN output maps (Fig. 4's maps).
  full = _apply(model, variables, jax.tree.map(lambda t: t[:, None], items),
                     jax.tree.map(lambda t: t[None], items), method="conditional_maps")
  chex.assert_shape(full["maps"], (4, 4, 16, 128))
  n = 8
  gcn = np.asarray(full["maps"], np.float64)
  p = variables["params"]
  pooled = gcn[:, :, :n].mean(2) @ np.asarray(p["encoder"]["kernel"]) + np.asarray(
      p["encoder"]["bias"])
  stats = variables["batch_stats"]["pair_neck"]
  necked = ((pooled - np.asarray(stats["mean"])) / np.sqrt(np.asarray(stats["var"]) + 1e-5)
            * np.asarray(p["pair_neck"]["scale"]))
  np.testing.assert_allclose(f_ab, necked, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gcn, cross_image", [("smoothing", True), ("discrepancy", False)])
def test_table_1_switches_match_numpy(paper, gcn, cross_image):
  _, variables, images = paper
  model = _tiny(gcn=gcn, cross_image=cross_image)
  items = _apply(model, variables, {"images": images}, method="embed")
  f_ab, _ = _apply(model, variables, items, items, method="conditional_features")
  for u, v in ((0, 1), (2, 3), (1, 1)):
    want = _numpy_conditional(variables, items["map"][u], items["map"][v], gcn, cross_image)[0]
    np.testing.assert_allclose(f_ab[u, v], want, rtol=2e-4, atol=2e-4)
  if not cross_image:  # individual-only graph: f(u|v) is the same for every v
    np.testing.assert_allclose(f_ab, np.broadcast_to(f_ab[:, :1], f_ab.shape), atol=1e-5)


def test_conditional_feature_depends_on_the_partner_individual_does_not(paper):
  model, variables, images = paper
  items = _apply(model, variables, {"images": images}, method="embed")
  f_ab, _ = _apply(model, variables, items, items, method="conditional_features")
  f_ab = np.asarray(f_ab)
  # f(u|v) changes with v ...
  for u in range(4):
    spread = max(np.abs(f_ab[u, v] - f_ab[u, 0]).max() for v in range(1, 4))
    assert spread > 1e-2 * np.abs(f_ab[u]).max()
  # ... while u's individual (global) feature does not depend on the batch.
  alone = _apply(model, variables, {"images": images[:1]}, method="embed")
  with_others = _apply(model, variables, {"images": images[jnp.array([0, 3, 2])]},
                            method="embed")
  np.testing.assert_allclose(alone["global"][0], items["global"][0], atol=1e-5)
  np.testing.assert_allclose(with_others["global"][0], items["global"][0], atol=1e-5)


@pytest.mark.parametrize("num_a, num_b", [(2, 3), (1, 5)])
def test_pair_work_once_per_pair_and_image_work_once_per_image(paper, num_a, num_b):
  model, variables, _ = paper
  n, d, e = 8, 128, 6
  items = lambda k: {"map": jnp.zeros((k, n, d)), "intra": jnp.zeros((k, n, n)),
                     "global": jnp.zeros((k, e))}
  jaxpr = jax.make_jaxpr(lambda a, b: model.apply(variables, a, b, method="pair_distance"))(
      items(num_a), items(num_b))
  dots = _dot_flops(jaxpr.jaxpr)
  # Per pair: S'_uv (Eq. 3), the two pooled propagations over 2N nodes of
  # D channels (4 weighted sums), theta (D x D; applied as GraphConvolution
  # on a one-node graph, whose 1 x 1 propagation adds 2 D per vector) and the
  # 1x1 conv, on the 2 pooled vectors. Nothing of one image alone (S_u of
  # Eq. 2, the map's GAP and the individual conv) is recomputed.
  per_pair = 2 * n * n * d + 4 * 2 * n * d + 2 * (2 * d + 2 * d * d) + 2 * (2 * d * e)
  assert sum(f for *_, f in dots) == num_a * num_b * per_pair
  # prepare: per image only, linear in the number of images.
  for k in (1, 3):
    jaxpr = jax.make_jaxpr(lambda f: model.apply(variables, f, method="prepare"))(
        {"map": jnp.zeros((k, 4, 2, d))})
    flops = sum(f for *_, f in _dot_flops(jaxpr.jaxpr))
    assert flops == k * (2 * n * n * d + 2 * d * e)  # S_u (Eq. 2) and the 1x1 conv


def test_mixup_loss_is_eq_8_over_all_ordered_pairs():
  rng = np.random.default_rng(1)
  b, c, alpha = 6, 5, 0.9
  pids = np.array([0, 0, 3, 3, 1, 1])
  logits = rng.normal(size=(b, b, c))
  loss = cacenet.mixup_id_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(pids), alpha)
  total = 0.0
  for u in range(b):
    for v in range(b):
      log_p = logits[u, v] - np.log(np.exp(logits[u, v]).sum())
      total += alpha * -log_p[pids[u]] + (1 - alpha) * -log_p[pids[v]]
  np.testing.assert_allclose(loss, total / b**2, rtol=1e-5)
  # alpha = 1: plain CE of f(u|v) against y_u.
  plain = cacenet.mixup_id_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(pids), 1.0)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(plain, -np.mean(log_p[np.arange(b), :, pids]), rtol=1e-5)


def _triplet(dist, pids, margin):
  b = len(pids)
  return np.mean([max(0.0, margin + max(dist[a, p] for p in range(b) if pids[p] == pids[a] and p != a)
                      - min(dist[a, q] for q in range(b) if pids[q] != pids[a])) for a in range(b)])


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_objective_adds_the_terms(variant):
  rng = np.random.default_rng(2)
  b, c, e = 6, 4, 5
  pids = np.repeat(np.arange(3), 2)
  outputs = {"features": rng.normal(size=(b, e)), "logits": rng.normal(size=(b, c)),
             "pair_features": rng.normal(size=(b, b, e)),
             "pair_logits": rng.normal(size=(b, b, c))}
  loss_config = cacenet_config.get_config(
      "synthetic" + (",official" if variant == "official" else "")).loss
  total, metrics = cacenet.cacenet_objective(
      jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), outputs), {"pids": jnp.asarray(pids)},
      loss_config)
  eps = loss_config.label_smoothing
  log_p = outputs["logits"] - np.log(np.exp(outputs["logits"]).sum(1, keepdims=True))
  ce = -np.mean((1 - eps) * log_p[np.arange(b), pids] + eps * log_p.mean(1))
  f = outputs["features"]
  if variant == "official":
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
  dist = np.linalg.norm(f[:, None] - f[None], axis=-1)
  triplet = _triplet(dist, pids, loss_config.triplet_margin)
  mixup = float(cacenet.mixup_id_loss(jnp.asarray(outputs["pair_logits"], jnp.float32),
                                      jnp.asarray(pids), 0.9))
  expected = ce + loss_config.mixup_weight * mixup + triplet
  np.testing.assert_allclose(metrics["ce"], ce, rtol=1e-5)
  np.testing.assert_allclose(metrics["triplet"], triplet, rtol=1e-5)
  if variant == "official":
    # The official pair triplet: d(i, j) = |n(f(j|i)) - n(f(i|j))| over the
    # B x B grid (pair k = i B + j holds f_0 = f(j|i), f_1 = f(i|j)).
    unit = outputs["pair_features"] / np.linalg.norm(outputs["pair_features"], axis=-1,
                                                     keepdims=True)
    pair_dist = np.array([[np.linalg.norm(unit[j, i] - unit[i, j]) for j in range(b)]
                          for i in range(b)])
    pair_triplet = _triplet(pair_dist, pids, 0.5)
    np.testing.assert_allclose(metrics["pair_triplet"], pair_triplet, rtol=1e-4, atol=1e-6)
    expected += pair_triplet
    assert loss_config.mixup_weight == 2.0  # loss_0 + loss_1 of the official code
  else:
    assert "pair_triplet" not in metrics
  np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_official_forward_non_local_pair_graph_and_head():
  model = _tiny("official")
  images = jax.random.normal(jax.random.PRNGKey(4), (3, 64, 32, 3))
  variables = _init(model, images)
  # Non-zero non-local and PairGraph outputs (both start as the identity).
  params = jax.tree.map(lambda x: x, variables["params"])
  rng = np.random.default_rng(3)
  for name in ("non_local2", "non_local3", "non_local4", "pair_graph"):
    kernel = params[name]["output"]["kernel"]
    params[name]["output"]["kernel"] = jnp.asarray(0.1 * rng.normal(size=kernel.shape),
                                                   jnp.float32)
  variables = {**variables, "params": params}
  x = _apply(model, variables, images, train=False, method="feature_map")
  chex.assert_shape(x, (3, 4, 2, 128))
  # Each 2-block stage: block 0, the non-local block, block 1.
  def by_hand(m, images):
    h = m.backbone.stem(images, False)
    for s in (1, 2, 3, 4):
      if s == 1:
        h = m.backbone.stage(1, h, False)
        continue
      h = m.backbone.stage(s, h, False, blocks=0)
      h = m.non_local[str(s)](h, False)
      h = m.backbone.stage(s, h, False, blocks=1)
    return h
  np.testing.assert_allclose(x, _apply(model, variables, images, method=by_hand), atol=1e-5)
  plain = _apply(model, variables, images, method=lambda m, i: m.backbone(i, False)["stage4"])
  assert np.abs(np.asarray(plain) - np.asarray(x)).max() > 1e-3  # the blocks act
  out = _apply(model, variables, {"images": images})
  # f(u|v): the left half of PairGraph([X_u, X_v]) (width-concatenated),
  # through the shared head (GeM, 1x1 conv, BN); logits through ReLU, dropout
  # (off at inference) and the pair classifier.
  pair_map = PairGraph().apply({"params": params["pair_graph"]},
                               jnp.concatenate([x[2], x[0]], axis=1)[None])[0]
  head = lambda m, t: m._official_head(t, False)  # pylint: disable=protected-access
  want = _apply(model, variables, pair_map[:, :2][None], method=head)[0]
  np.testing.assert_allclose(out["pair_features"][2, 0], want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["features"], _apply(model, variables, x, method=head),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      out["pair_logits"][2, 0],
      np.maximum(np.asarray(want), 0) @ np.asarray(params["pair_classifier"]["kernel"]),
      rtol=1e-4, atol=1e-6)
  # Ranking: by the global embedding only (config default), or conditional.
  items = _apply(model, variables, {"images": images}, method="embed")
  dist = np.asarray(_apply(model, variables, items, items, method="pair_distance"))
  g = np.asarray(out["embeddings"], np.float64)
  g /= np.linalg.norm(g, axis=1, keepdims=True)
  np.testing.assert_allclose(dist, 1 - g @ g.T, atol=1e-5)
  conditional = model.clone(pair_score="conditional")
  items = _apply(conditional, variables, {"images": images}, method="embed")
  f_ab, f_ba = _apply(conditional, variables, items, items, method="conditional_features")
  np.testing.assert_allclose(f_ab, out["pair_features"], rtol=1e-4, atol=1e-4)
  # PairGraph is equivariant to swapping the halves: f(v|u) of (u, v) is f(v|u) of (v, u).
  np.testing.assert_allclose(f_ba, np.swapaxes(np.asarray(f_ab), 0, 1), rtol=1e-4, atol=1e-4)
  # Training: dropout before both classifiers, driven by the dropout rng.
  train = lambda key: _apply(model, variables, {"images": images}, train=True,
                                  mutable=["batch_stats"], rngs={"dropout": key})[0]
  assert np.abs(np.asarray(train(jax.random.PRNGKey(0))["logits"])
                - np.asarray(train(jax.random.PRNGKey(1))["logits"])).max() > 0


def test_bad_settings_are_clear_errors():
  x = jnp.zeros((1, 64, 32, 3))
  for option, message in ((dict(gcn="normal"), "model.gcn"),
                          (dict(adjacency="attention"), "model.adjacency"),
                          (dict(pair_score="sum"), "model.pair_score"),
                          (dict(non_local_stages=(1,)), "model.non_local_stages")):
    with pytest.raises(ValueError, match=message):
      jax.eval_shape(lambda x, o=option: _tiny(**o).init(jax.random.PRNGKey(0), {"images": x}),
                     x)
  with pytest.raises(ValueError, match="model.variant"):
    config = _config(backbone=_TINY)
    config.variant = "both"
    jax.eval_shape(lambda x: models.build_model(config, 5).init(jax.random.PRNGKey(0),
                                                                 {"images": x}), x)
  with pytest.raises(ValueError, match="variant 'offical'"):
    cacenet_config.get_config("synthetic,offical")
  with pytest.raises(ValueError, match="video"):
    cacenet_config.get_config("mars")


def test_paper_recipe():
  c = cacenet_config.get_config("market1501")
  assert (c.data.height, c.data.width) == (384, 128)
  assert (c.data.num_identities, c.data.num_instances) == (4, 4)
  assert c.data.flip and c.data.pad > 0 and c.data.random_erasing == 0.5
  assert (c.optimizer.name, c.optimizer.momentum, c.optimizer.weight_decay,
          c.optimizer.lr) == ("sgd", 0.9, 5e-4, 6.25e-3)
  assert (c.schedule.kind, c.schedule.epochs, c.schedule.warmup_epochs,
          c.schedule.warmup_factor, c.schedule.final_lr_factor) == ("cosine", 80, 5, 0.0, 0.0)
  assert (c.eval.rerank_top_k, c.eval.rerank_combine, c.eval.metric) == (100, "sum", "cosine")
  assert c.loss.mixup_alpha == 0.9 and c.model.variant == "paper"
  o = cacenet_config.get_config("dukemtmc,official")
  assert (o.model.variant, o.model.pair_score, o.eval.rerank_top_k) == (
      "official", "individual", 0)
  assert (o.loss.label_smoothing, o.loss.triplet_margin, o.model.embed_dim) == (0.1, 0.5, 768)
  for dataset in ("msmt17", "occluded_duke", "synthetic"):
    assert cacenet_config.get_config(dataset).model.name == "cacenet"
  # The synthetic quick start tunes only the recipe (optimizer, schedule,
  # sizes); the official variant's design and losses are the dataset ones.
  quick = cacenet_config.get_config("synthetic,official")
  assert quick.loss.to_dict() == o.loss.to_dict()
  for key in ("variant", "pair_score", "non_local_stages", "dropout"):
    assert quick.model[key] == o.model[key], key
  assert (quick.eval.rerank_top_k, quick.eval.metric) == (o.eval.rerank_top_k, o.eval.metric)


def test_tiny_train_run_two_stage_ranking(tmp_path):
  """train.py end to end (tiny set), then the restored run's K = G two-stage
  ranking with "sum" equals the NumPy ranking of d1 + d2 over the gallery."""
  from reidjax.evaluate import numpy_reference  # pylint: disable=g-import-not-at-top
  from tests.test_train_datasets import _restored, _train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "wd"
  results, steps, _ = _train("configs/cacenet.py:synthetic", workdir, {
      "data.root": tmp_path / "market",
      "data.synthetic.num_train_ids": 4, "data.synthetic.num_test_ids": 3,
      "data.synthetic.images_per_id": 8, "data.synthetic.num_distractors": 2,
      "data.synthetic.num_junk": 1, "data.pad": 2,
      "data.num_identities": 2, "data.num_instances": 2, "data.eval_batch_size": 8,
      "model.backbone.stage_sizes": "(1,1,1,1)", "model.backbone.width": 4,
      "model.embed_dim": 8, "eval.rerank_top_k": 5, "schedule.epochs": 2,
      "schedule.warmup_epochs": 0, "train.log_every_steps": 1, "data.epoch": "identities"})
  assert steps == [1, 2, 3, 4]
  embedder, two_stage, dataset = _restored(workdir)
  state = types.SimpleNamespace(**embedder.variables)
  again = two_stage.run(state, 0)
  np.testing.assert_allclose(again["mAP"], results["mAP"], rtol=1e-6)
  every = _restored(workdir, rerank_top_k=len(dataset.gallery))[1]
  query = every.embed(embedder.variables, dataset.query)
  gallery = every.embed(embedder.variables, dataset.gallery)
  q, g = (np.asarray(t["global"], np.float64) for t in (query, gallery))
  d1 = 1 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
      g / np.linalg.norm(g, axis=1, keepdims=True)).T
  d2 = embedder.distance(query, gallery)
  want = numpy_reference.evaluate_ranking_loop(
      d1 + d2, dataset.query.pids, dataset.gallery.pids, dataset.query.camids,
      dataset.gallery.camids, max_rank=embedder.config.eval.max_rank)
  got = every.run(state, 0)
  np.testing.assert_allclose(got["mAP"], want.mAP, rtol=1e-4)
  np.testing.assert_allclose(got["cmc"], want.cmc, atol=1e-6)
