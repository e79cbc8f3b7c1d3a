"""Attention-Driven ReID: paper-size shapes and parameter counts, branches, fusion, objective."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import attdriven as attdriven_config
from reidjax import losses, models
from reidjax.backbones import resnet
from reidjax.layers.intra_attention import IntraAttention
from reidjax.models import attdriven

MARKET_IDS = 751


def _bn(c):
  return 2 * c


def _bottleneck(c_in, width, expansion=2, stride=1):
  out = expansion * width
  n = c_in * width + _bn(width) + 9 * width * width + _bn(width) + width * out + _bn(out)
  if stride != 1 or c_in != out:
    n += c_in * out + _bn(out)
  return n


def _trunk(widths, blocks=3):
  """A branch's stages (Table 1: three bottlenecks per stage, expansion 2) + its stem BN."""
  n, c = _bn(32), 32
  for i, w in enumerate(widths):
    n += _bottleneck(c, w, stride=2 if i in (1, 2) else 1)
    n += (blocks - 1) * _bottleneck(2 * w, w)
    c = 2 * w
  return n


def _attention(widths, pools=(2, 1, 1)):
  """Attention paths of B2-B4: P residual units + S (3x3, c -> 1) + C (c -> c) + fuse (c -> c)."""
  n = 0
  for w, p in zip(widths[1:], pools):
    c = 2 * w
    n += p * _bottleneck(c, w) + (9 * c + 1) + (c * c + c) + (c * c + c)
  return n


GLOBAL, PART = (32, 64, 128, 256), (16, 32, 64, 128)
CONV1 = 3 * 3 * 3 * 32  # shared by the five branches
HEADS = (512 * 256 + 256 + _bn(256)) + 4 * (256 * 128 + 128 + _bn(128))  # FC reduce + BN
CLASSIFIERS = (256 + 1) * MARKET_IDS + 4 * (128 + 1) * MARKET_IDS
INTER = 4 * (128 + 1)
FUSED_CLASSIFIER = (768 + 1) * MARKET_IDS
BASE_TRUNKS = CONV1 + _trunk(GLOBAL) + 4 * _trunk(PART)
ATTENTION = _attention(GLOBAL) + 4 * _attention(PART)


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def _paper_inputs(n=2):
  return {"images": jax.ShapeDtypeStruct((n, 384, 192, 3), jnp.float32),
          "parts": jax.ShapeDtypeStruct((n, 4, 96, 192, 3), jnp.float32)}


def _paper_model(**switches):
  config = attdriven_config.get_config("market1501").model
  config.update(switches)
  return models.build_model(config, num_classes=MARKET_IDS)


def test_architecture_arithmetic_next_to_table_12():
  # Independent of the code: Table 1's layers counted by hand (test helpers above).
  assert BASE_TRUNKS == 7_003_424  # resnet.attdriven_branch's 7,003,168 + 4 part stem BNs
  assert ATTENTION == 3_761_039
  assert HEADS == 264_448
  # Table 12: base network 6.8 M, full model 10.4 M (no classifiers, as its ResNet-50
  # row, 23.5 M, has none). Ours: 7.27 M (+7 %) and 11.03 M (+6 %).
  base, full = BASE_TRUNKS + HEADS, BASE_TRUNKS + HEADS + ATTENTION + INTER
  assert (base, full) == (7_267_872, 11_029_427)
  assert abs(base / 6.8e6 - 1) < 0.08 and abs(full / 10.4e6 - 1) < 0.07


@pytest.mark.parametrize("full", [False, True])
def test_paper_size_parameter_counts_and_shapes(full):
  switches = {} if full else {"intra_attention": False, "fusion": "concat"}
  model = _paper_model(**switches)
  inputs = _paper_inputs()
  outputs, variables = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.PRNGKey(0), x), inputs)
  params = variables["params"]
  branches = ("backbone", "part1", "part2", "part3", "part4")
  assert _count({k: params[k] for k in branches}) == BASE_TRUNKS
  # Conv1 is shared: only the global branch has it.
  assert "conv1" in params["backbone"] and all("conv1" not in params[f"part{k}"]
                                               for k in range(1, 5))
  attention = {k: v for k, v in params.items() if "_attention" in k and k != "inter_attention"}
  assert _count(attention) == (ATTENTION if full else 0)
  expected = BASE_TRUNKS + HEADS + CLASSIFIERS + (ATTENTION + INTER + FUSED_CLASSIFIER
                                                  if full else 0)
  assert _count(params) == expected
  chex.assert_shape(outputs["embeddings"], (2, 768))
  assert set(outputs["branch_logits"]) == {"global", "part1", "part2", "part3", "part4"}
  chex.assert_shape(list(outputs["branch_logits"].values()), (2, MARKET_IDS))
  assert ("fused_logits" in outputs) == full
  chex.assert_shape(outputs["features"]["global"], (2, 256))
  chex.assert_shape(outputs["features"]["part3"], (2, 128))
  if full:
    chex.assert_shape(outputs["inter"]["weights"], (2, 4))
    # Map sizes (h, w) of B2-B4: global 48x24, 24x12, 24x12; parts 24x24, 12x12, 12x12.
    for name, sizes in (("global", ((48, 24), (24, 12), (24, 12))),
                        ("part2", ((24, 24), (12, 12), (12, 12)))):
      for stage, size in zip((2, 3, 4), sizes):
        chex.assert_shape(outputs["attention"][name][f"stage{stage}"]["mask_map"], (2,) + size)
  else:
    assert outputs["attention"]["global"] == {} and outputs["inter"] == {}


# A tiny network: one bottleneck per stage, 32 x 16 whole body, 8 x 16 parts.
def _tiny(**switches):
  config = attdriven_config.get_config("synthetic").model
  config.backbone.stage_widths = (2, 4, 4, 8)
  config.part_stage_widths = (2, 2, 4, 4)
  config.global_reduce, config.part_reduce = 8, 4
  config.update(switches)
  return models.build_model(config, num_classes=5)


def _inputs(n=3, seed=0):
  a, b = jax.random.split(jax.random.PRNGKey(seed))
  return {"images": jax.random.normal(a, (n, 32, 16, 3)),
          "parts": jax.random.normal(b, (n, 4, 8, 16, 3))}


@pytest.fixture(scope="module")
def tiny():
  model = _tiny()
  x = _inputs()
  variables = model.init(jax.random.PRNGKey(0), x)
  # Random attention masks (the fuse kernels start at zero: m = 1/2 everywhere).
  params = jax.tree_util.tree_map_with_path(
      lambda path, v: (0.3 * jax.random.normal(jax.random.PRNGKey(len(path)), v.shape)
                       if "fuse" in jax.tree_util.keystr(path) else v), variables["params"])
  variables = {**variables, "params": params}
  outputs = model.apply(variables, x)
  return model, variables, x, outputs


def test_final_feature_is_global_and_inter_attended_parts(tiny):
  model, variables, x, out = tiny
  features, weights = out["features"], out["inter"]["weights"]
  expected = np.concatenate(
      [features["global"]] + [(1 + weights[:, k:k + 1]) * features[f"part{k + 1}"]
                              for k in range(4)], axis=1)
  np.testing.assert_allclose(out["embeddings"], expected, rtol=1e-5, atol=1e-6)
  embed = model.apply(variables, x, method="embed")
  np.testing.assert_allclose(embed, out["embeddings"], rtol=1e-5, atol=1e-6)
  # Inference mode: dropout off, so the logits are the classifiers of E and [E_g, E_l].
  p = variables["params"]
  np.testing.assert_allclose(
      out["fused_logits"],
      expected @ p["fused_classifier"]["kernel"] + p["fused_classifier"]["bias"],
      rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
      out["branch_logits"]["part2"],
      features["part2"] @ p["part2_classifier"]["kernel"] + p["part2_classifier"]["bias"],
      rtol=1e-4, atol=1e-5)


def test_each_branch_sees_only_its_crop_and_conv1_is_shared(tiny):
  model, variables, x, out = tiny
  apply = lambda v, x: model.apply(v, x)["features"]
  changed = {**x, "parts": x["parts"].at[:, 2].add(1.0 + x["parts"][:, 2] ** 2)}
  features = apply(variables, changed)
  for name in ("global", "part1", "part2", "part4"):
    np.testing.assert_allclose(features[name], out["features"][name], rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(features["part3"] - out["features"]["part3"]).max()) > 1e-3
  # Conv1's kernel lives in the global branch and drives every part branch.
  params = jax.tree.map(lambda v: v, variables["params"])
  params["backbone"]["conv1"]["kernel"] = params["backbone"]["conv1"]["kernel"] * 1.5 + 0.1
  features = apply({**variables, "params": params}, x)
  for name in ("global", "part1", "part4"):
    assert float(jnp.abs(features[name] - out["features"][name]).max()) > 1e-3


def test_per_image_channel_means_do_not_matter(tiny):
  model, variables, x, out = tiny
  shift = jax.random.normal(jax.random.PRNGKey(9), (3, 1, 1, 3))
  shifted = {"images": x["images"] + shift, "parts": x["parts"] + shift[:, None] * 2.0}
  embed = model.apply(variables, shifted, method="embed")
  np.testing.assert_allclose(embed, out["embeddings"], rtol=1e-4, atol=1e-5)


def test_intra_attention_is_applied_after_b2_to_b4(tiny):
  model, variables, x, out = tiny
  assert set(out["attention"]["part1"]) == {"stage2", "stage3", "stage4"}

  def stage_two(m, x):
    # Global branch by hand: shared Conv1, its BN, stem pool, stage 1, then B2's units
    # and a stand-alone IntraAttention with the model's parameters.
    b = m.backbone
    y = b.stem_pool(jax.nn.relu(b.bn1(b.conv1(x - x.mean(axis=(1, 2), keepdims=True)),
                                      use_running_average=True)))
    y = b.stage(1, y, False)
    shared = b.stage(2, y, False, blocks=slice(0, 1))
    return shared, b.stage(2, shared, False, blocks=slice(1, None))

  shared, features = model.apply(variables, x["images"], method=stage_two)
  layer = IntraAttention(num_pools=2, decomposition="both", expansion=2)
  att_vars = {c: variables[c]["global_attention2"] for c in ("params", "batch_stats")}
  _, aux = layer.apply(att_vars, shared, features, train=False)
  np.testing.assert_allclose(out["attention"]["global"]["stage2"]["mask"], aux["mask"],
                             rtol=1e-4, atol=1e-5)
  maps = model.apply(variables, x, method="attention_maps")
  np.testing.assert_allclose(maps["global"]["stage2"], aux["mask_map"], rtol=1e-4, atol=1e-5)


def test_objective_is_eq_11(tiny):
  model, variables, x, out = tiny
  pids = jnp.array([0, 3, 4])
  config = ml_collections.ConfigDict(dict(branch_weight=0.3, label_smoothing=0.0))
  loss, metrics = attdriven.attdriven_objective(out, {"pids": pids}, config)
  ce = lambda logits: losses.cross_entropy_with_label_smoothing(logits, pids)[0]
  branch = [ce(out["branch_logits"][n]) for n in ("global", "part1", "part2", "part3", "part4")]
  np.testing.assert_allclose(loss, 0.3 * sum(branch) + ce(out["fused_logits"]), rtol=1e-5)
  np.testing.assert_allclose(metrics["ce_part3"], branch[3], rtol=1e-6)
  assert metrics["loss"] == loss
  # No fused classifier (concatenation): the branch CEs, summed with weight 1.
  concat = {k: v for k, v in out.items() if k != "fused_logits"}
  loss, _ = attdriven.attdriven_objective(concat, {"pids": pids}, config)
  np.testing.assert_allclose(loss, sum(branch), rtol=1e-5)


def test_training_step_uses_dropout_and_updates_batch_stats(tiny):
  model, variables, x, _ = tiny
  run = lambda v, x, k: model.apply(v, x, train=True, mutable=["batch_stats"],
                                    rngs={"dropout": k})
  out1, updates = run(variables, x, jax.random.PRNGKey(1))
  out2, _ = run(variables, x, jax.random.PRNGKey(2))
  np.testing.assert_allclose(out1["embeddings"], out2["embeddings"], rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(out1["fused_logits"] - out2["fused_logits"]).max()) > 1e-4
  for path in (("part1_attention2", "encoder_decoder", "encoder1", "bn1"),
               ("part2", "bn1"), ("global_reduce_bn",)):
    before, after = variables["batch_stats"], updates["batch_stats"]
    for key in path:
      before, after = before[key], after[key]
    assert float(jnp.abs(after["mean"] - before["mean"]).max()) > 1e-5, path


@pytest.mark.parametrize("switches, dim, logits, has_fused", [
    ({"branches": "global"}, 8, {"global"}, False),
    ({"branches": "parts"}, 16, {"part1", "part2", "part3", "part4"}, True),
    ({"fusion": "fc", "decomposition": "none"}, 24, None, True),
    ({"fusion": "concat", "intra_attention": False}, 24, None, False),
    ({"decomposition": "spatial"}, 24, None, True),
    ({"decomposition": "channel", "attention_stages": (3,), "attention_pools": (1,)}, 24, None,
     True),
])
def test_ablation_switches(switches, dim, logits, has_fused):
  model = _tiny(**switches)
  x = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _inputs())
  out, variables = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.PRNGKey(0), x), x)
  chex.assert_shape(out["embeddings"], (3, dim))
  names = logits or {"global", "part1", "part2", "part3", "part4"}
  assert set(out["branch_logits"]) == names
  assert ("fused_logits" in out) == has_fused
  params = variables["params"]
  assert ("fc" in params.get("inter_attention", {})) == (switches.get("fusion") == "fc")
  if switches.get("intra_attention") is False:
    assert not any("_attention" in k and k != "inter_attention" for k in params)
  if "attention_stages" in switches:
    assert sorted(k for k in params if k.startswith("global_attention")) == [
        "global_attention3"]
  if switches.get("branches") == "global":
    assert not any(k.startswith("part") for k in params)


def test_transfer_pretrained_copies_all_but_the_classifiers():
  # The global branch alone keeps this cheap; the rule is per variable path.
  model = _tiny(branches="global")
  other = model.clone(num_classes=9)
  x = _inputs(n=2)
  fresh = model.init(jax.random.PRNGKey(0), x)
  source = other.init(jax.random.PRNGKey(1), x)
  merged = attdriven.transfer_pretrained(fresh, source)
  np.testing.assert_array_equal(merged["params"]["backbone"]["layer3_0"]["conv2"]["kernel"],
                                source["params"]["backbone"]["layer3_0"]["conv2"]["kernel"])
  np.testing.assert_array_equal(
      merged["params"]["global_attention4"]["mask"]["spatial"]["kernel"],
      source["params"]["global_attention4"]["mask"]["spatial"]["kernel"])
  np.testing.assert_array_equal(merged["batch_stats"]["global_reduce_bn"]["var"],
                                source["batch_stats"]["global_reduce_bn"]["var"])
  assert not np.array_equal(fresh["params"]["backbone"]["layer3_0"]["conv2"]["kernel"],
                            source["params"]["backbone"]["layer3_0"]["conv2"]["kernel"])
  # The classifier (9 identities there, 5 here) stays the fresh one.
  np.testing.assert_array_equal(merged["params"]["global_classifier"]["kernel"],
                                fresh["params"]["global_classifier"]["kernel"])
  small = _tiny(branches="global", intra_attention=False).init(jax.random.PRNGKey(1), x)
  with pytest.raises(ValueError, match="global_attention2.*missing in the checkpoint"):
    attdriven.transfer_pretrained(fresh, small)


def test_bad_inputs_and_settings_are_clear_errors():
  x = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _inputs())
  init = lambda m, x: jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), x), x)
  with pytest.raises(ValueError, match=r"inputs\['parts'\] must be \(N, 4, Hp, Wp, 3\)"):
    init(_tiny(), {**x, "parts": jax.ShapeDtypeStruct((3, 3, 8, 16, 3), jnp.float32)})
  with pytest.raises(ValueError, match="model.branches must be one of"):
    init(_tiny(branches="both"), x)
  with pytest.raises(ValueError, match="model.attention_stages"):
    init(_tiny(attention_stages=(1, 2), attention_pools=(1, 1)), x)
  with pytest.raises(ValueError, match="model.fusion must be one of"):
    init(_tiny(fusion="sum"), x)
  with pytest.raises(ValueError, match=r"model\.fusoin is not an option"):
    _tiny(fusoin="inter")


def test_configs():
  for arg in ("market1501", "dukemtmc", "cuhk03_labeled", "cuhk03_detected_classic"):
    c = attdriven_config.get_config(arg)
    assert (c.data.height, c.data.width) == (384, 192)
    assert (c.data.parts.height, c.data.parts.width) == (96, 192)
    assert c.data.sampler == "random" and c.data.num_identities * c.data.num_instances == 32
    assert c.optimizer.name == "sgd" and c.optimizer.lr == 0.01
    assert c.schedule.epochs == 100 and tuple(c.schedule.milestones) == (40, 80)
    assert c.loss.branch_weight == (0.1 if arg in ("market1501", "dukemtmc") else 0.2)
    branch = resnet.attdriven_branch("global")
    assert tuple(c.model.backbone.stage_widths) == tuple(branch.stage_widths)
  c = attdriven_config.get_config("cuhk03_detected_classic")
  assert c.data.name == "cuhk03_detected" and c.data.options.split == "classic"
  assert c.eval.protocol == "cuhk03"
  assert attdriven_config.get_config("msmt17").loss.branch_weight == 0.5
  with pytest.raises(ValueError, match="image datasets"):
    attdriven_config.get_config("mars")
  assert models.get_objective("attdriven") is attdriven.attdriven_objective


def test_train_py_end_to_end(tmp_path):
  """configs/attdriven.py:synthetic through train.py on a tiny set: pose boxes from
  the generated keypoints, part crops through the pipeline, Eq. 11, evaluation."""
  import json  # pylint: disable=g-import-not-at-top
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  data_root, workdir = tmp_path / "market", tmp_path / "wd"
  overrides = {
      "data.root": data_root, "data.synthetic.num_train_ids": 6,
      "data.synthetic.num_test_ids": 4, "data.synthetic.images_per_id": 8,
      "data.synthetic.num_distractors": 2, "data.synthetic.num_junk": 1,
      "data.height": 32, "data.width": 16, "data.parts.height": 8, "data.parts.width": 16,
      "data.num_identities": 4, "data.num_instances": 2, "data.eval_batch_size": 16,
      "model.backbone.stage_widths": "(2,4,4,8)", "model.part_stage_widths": "(2,2,4,4)",
      "model.global_reduce": 8, "model.part_reduce": 4,
      # Intra-attention in one block (not B2-B4): a third of the compile time.
      "model.attention_stages": "(3,)", "model.attention_pools": "(1,)",
      "schedule.epochs": 1, "schedule.milestones": "(1,)", "train.log_every_steps": 1,
  }
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  subprocess.run([sys.executable, "train.py", "--config", "configs/attdriven.py:synthetic",
                  "--workdir", str(workdir)] + [f"--config.{k}={v}" for k, v in overrides.items()],
                 cwd=root, env=env, check=True, capture_output=True, timeout=900)
  results = json.load(open(workdir / "results.json"))
  rows = [json.loads(line) for line in open(workdir / "train_metrics.jsonl")]
  assert {"ce_global", "ce_part4", "ce_fused"} <= set(rows[-1])
  # model.pretrained: a run of the same network starts from the trained one's
  # variables; with no training step its evaluation is the trained run's.
  started = tmp_path / "started"
  overrides.update({"model.pretrained": workdir, "schedule.epochs": 0})
  subprocess.run([sys.executable, "train.py", "--config", "configs/attdriven.py:synthetic",
                  "--workdir", str(started)] + [f"--config.{k}={v}" for k, v in overrides.items()],
                 cwd=root, env=env, check=True, capture_output=True, timeout=900)
  again = json.load(open(started / "results.json"))
  for key in ("mAP", "rank1", "mINP"):
    assert again[key] == pytest.approx(results[key], abs=1e-6), key
