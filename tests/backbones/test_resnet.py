"""Tests for reidjax.backbones.resnet.

Full-size ResNet-50 checks use ``jax.eval_shape`` (no compute); real forward
passes use a tiny network.
"""

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reidjax.backbones import Bottleneck
from reidjax.backbones import ResNet
from reidjax.backbones import resnet50
from reidjax.backbones import resnet
from tests.backbones.util import abstract_init, num_entries

_DN = ("NHWC", "HWIO", "NHWC")
_EPS = 1e-5


def _tiny(**kwargs):
  return ResNet(stage_sizes=(1, 1, 1, 1), width=8, **kwargs)


def test_resnet50_parameter_count():
  variables = abstract_init(resnet50())
  # torchvision resnet50: 25,557,032 minus fc (2048 * 1000 + 1000).
  assert num_entries(variables["params"]) == 23_508_032


def test_resnet50_batch_stats_match_bn_channels():
  variables = abstract_init(resnet50())
  bn_channels = sum(
      int(np.prod(leaf.shape))
      for path, leaf in flax.traverse_util.flatten_dict(
          variables["params"]).items() if path[-1] == "scale")
  # By hand: stem 64; each block 6 * w (bn1, bn2: w; bn3: 4w) plus a
  # 4 * w downsample BN in block 0, w = 64, 128, 256, 512.
  by_hand = 64 + sum(n * 6 * w + 4 * w
                     for n, w in zip((3, 4, 6, 3), (64, 128, 256, 512)))
  assert bn_channels == by_hand == 26_560
  assert num_entries(variables["batch_stats"]) == 2 * 26_560 == 53_120


def _torch_key(path):
  """Flax variable path -> torchvision key, per the module docstring."""
  collection, *modules, leaf = path
  modules = [m.replace("_", ".", 1) if m.startswith("layer") else m
             for m in modules]
  modules = [{"downsample_conv": "downsample.0",
              "downsample_bn": "downsample.1"}.get(m, m) for m in modules]
  leaf = {("params", "kernel"): "weight", ("params", "scale"): "weight",
          ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
          ("batch_stats", "var"): "running_var"}[(collection, leaf)]
  return ".".join(modules + [leaf])


def _torchvision_resnet50_keys():
  """torchvision resnet50 state_dict keys, minus fc and num_batches_tracked."""
  bn = ("weight", "bias", "running_mean", "running_var")
  keys = {"conv1.weight"} | {f"bn1.{s}" for s in bn}
  for i, n in enumerate((3, 4, 6, 3), start=1):
    for j in range(n):
      p = f"layer{i}.{j}"
      for k in (1, 2, 3):
        keys |= {f"{p}.conv{k}.weight"} | {f"{p}.bn{k}.{s}" for s in bn}
      if j == 0:
        keys |= {f"{p}.downsample.0.weight"}
        keys |= {f"{p}.downsample.1.{s}" for s in bn}
  return keys


def test_resnet50_names_map_onto_torchvision():
  variables = abstract_init(resnet50())
  flat = flax.traverse_util.flatten_dict(variables)
  mapped = {_torch_key(path): leaf.shape for path, leaf in flat.items()}
  assert len(mapped) == len(flat)
  assert set(mapped) == _torchvision_resnet50_keys()
  # Kernels are HWIO; torchvision OIHW shapes for reference.
  torch_shapes = {
      "conv1.weight": (64, 3, 7, 7),
      "layer1.0.conv1.weight": (64, 64, 1, 1),
      "layer1.0.downsample.0.weight": (256, 64, 1, 1),
      "layer2.0.conv2.weight": (128, 128, 3, 3),
      "layer3.5.conv3.weight": (1024, 256, 1, 1),
      "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
      "layer4.2.bn3.running_var": (2048,),
  }
  for key, torch_shape in torch_shapes.items():
    shape = mapped[key]
    if len(shape) == 4:
      shape = tuple(shape[a] for a in (3, 2, 0, 1))
    assert shape == torch_shape, key


@pytest.mark.parametrize("last_stride, stage4_hw", [(1, (16, 8)), (2, (8, 4))])
def test_resnet50_stage_shapes(last_stride, stage4_hw):
  model = resnet50(last_stride=last_stride)
  x = jax.ShapeDtypeStruct((2, 256, 128, 3), jnp.float32)
  variables = abstract_init(model)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                       variables, x)
  assert sorted(out) == ["stage1", "stage2", "stage3", "stage4"]
  chex.assert_shape(out["stage1"], (2, 64, 32, 256))
  chex.assert_shape(out["stage2"], (2, 32, 16, 512))
  chex.assert_shape(out["stage3"], (2, 16, 8, 1024))
  chex.assert_shape(out["stage4"], (2, *stage4_hw, 2048))


def test_tiny_forward_train_updates_stats_eval_does_not():
  model = _tiny()
  x = jax.random.normal(jax.random.key(1), (2, 32, 16, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  stats = variables["batch_stats"]

  out, updates = model.apply(variables, x, train=True,
                             mutable=["batch_stats"])
  for name, shape in [("stage1", (2, 8, 4, 32)), ("stage2", (2, 4, 2, 64)),
                      ("stage3", (2, 2, 1, 128)), ("stage4", (2, 2, 1, 256))]:
    chex.assert_shape(out[name], shape)
    chex.assert_tree_all_finite(out[name])
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats,
                         updates["batch_stats"])
  assert all(jax.tree.leaves(changed))  # every BN saw the batch

  out_eval, updates_eval = model.apply(variables, x, train=False,
                                       mutable=["batch_stats"])
  chex.assert_tree_all_finite(out_eval)
  chex.assert_trees_all_equal(updates_eval["batch_stats"], stats)
  # Train mode normalises with batch statistics, eval with running ones.
  assert not np.allclose(out["stage4"], out_eval["stage4"])


def _max_pool_3x3_s2_pad1(x):
  """Reference torch MaxPool2d(3, 2, padding=1) in NumPy, NHWC."""
  n, h, w, c = x.shape
  xp = np.full((n, h + 2, w + 2, c), -np.inf, x.dtype)
  xp[:, 1:-1, 1:-1] = x
  ho, wo = (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1
  out = np.empty((n, ho, wo, c), x.dtype)
  for i in range(ho):
    for j in range(wo):
      out[:, i, j] = xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(1, 2))
  return out


def _max_pool_same(x):
  """The wrong (Flax 'SAME') 3x3/2 max-pool, for the sensitivity check."""
  return np.asarray(jax.lax.reduce_window(
      x, -np.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME"))


def _stem_reference(x, kernel, conv_padding):
  y = jax.lax.conv_general_dilated(x, kernel, (2, 2), conv_padding,
                                   dimension_numbers=_DN,
                                   precision=jax.lax.Precision.HIGHEST)
  # bn1 at init in eval mode: mean 0, var 1, gamma 1, beta 0.
  y = np.maximum(np.asarray(y) / np.sqrt(1 + _EPS), 0)
  return _max_pool_3x3_s2_pad1(y)


def test_stem_padding_matches_torchvision():
  # H = 31 is odd (conv SAME would be symmetric) but gives an even 16-pixel
  # map where SAME max-pool would pad (0, 1); W = 18 is even, where SAME
  # conv would pad (2, 3). Either mistake changes the output.
  model = _tiny()
  x = jax.random.normal(jax.random.key(1), (2, 31, 18, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  kernel = jax.random.normal(jax.random.key(2), (7, 7, 3, 8))
  variables = flax.core.unfreeze(variables)
  variables["params"]["conv1"]["kernel"] = kernel

  _, state = model.apply(variables, x, train=False,
                         mutable=["intermediates"])
  (stem,) = state["intermediates"]["stem"]
  want = _stem_reference(x, kernel, ((3, 3), (3, 3)))
  chex.assert_shape(stem, (2, 8, 5, 8))
  np.testing.assert_allclose(stem, want, rtol=1e-4, atol=1e-4)

  # The test is sensitive to the padding: the 'SAME' reference differs.
  wrong = jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME",
                                       dimension_numbers=_DN)
  wrong = _max_pool_same(np.maximum(np.asarray(wrong) / np.sqrt(1 + _EPS), 0))
  assert wrong.shape == want.shape
  assert not np.allclose(wrong, want, rtol=1e-2, atol=1e-2)


def test_strided_bottleneck_matches_reference():
  block = Bottleneck(features=4, strides=2)
  x = jax.random.normal(jax.random.key(1), (2, 8, 6, 8))
  variables = block.init(jax.random.key(0), x, train=False)
  # Random BN statistics and affine terms so eval-mode BN is not identity.
  keys = iter(jax.random.split(jax.random.key(3), 64))
  variables = jax.tree.map(
      lambda v: jax.random.uniform(next(keys), v.shape, minval=0.5,
                                   maxval=1.5), variables)
  p, s = variables["params"], variables["batch_stats"]

  def conv(y, name, stride, pad):
    return jax.lax.conv_general_dilated(
        y, p[name]["kernel"], (stride, stride), pad, dimension_numbers=_DN,
        precision=jax.lax.Precision.HIGHEST)

  def bn(y, name):
    return ((y - s[name]["mean"]) / jnp.sqrt(s[name]["var"] + _EPS)
            * p[name]["scale"] + p[name]["bias"])

  def reference(pad3x3):
    y = jax.nn.relu(bn(conv(x, "conv1", 1, "VALID"), "bn1"))
    y = jax.nn.relu(bn(conv(y, "conv2", 2, pad3x3), "bn2"))
    y = bn(conv(y, "conv3", 1, "VALID"), "bn3")
    shortcut = bn(conv(x, "downsample_conv", 2, "VALID"), "downsample_bn")
    return jax.nn.relu(y + shortcut)

  out = block.apply(variables, x, train=False)
  chex.assert_shape(out, (2, 4, 3, 16))
  want = reference(((1, 1), (1, 1)))
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
  wrong = reference("SAME")  # pads (0, 1) on these even sizes
  assert not np.allclose(wrong, want, rtol=1e-2, atol=1e-2)


def test_bfloat16_activations_float32_params():
  model = _tiny(dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(1), (2, 32, 16, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32
  out, updates = model.apply(variables, x, train=True,
                             mutable=["batch_stats"])
  for name in ("stage1", "stage2", "stage3", "stage4"):
    assert out[name].dtype == jnp.bfloat16, name
    chex.assert_tree_all_finite(out[name])
  for leaf in jax.tree.leaves(updates):
    assert leaf.dtype == jnp.float32


def test_conv_init_is_kaiming_normal_fan_out():
  kernel = resnet.conv_kernel_init(jax.random.key(0), (7, 7, 3, 64))
  std = np.sqrt(2.0 / (7 * 7 * 64))  # fan_out = kh * kw * out_channels
  np.testing.assert_allclose(np.std(kernel), std, rtol=0.05)
  # Untruncated normal: about 4.6% of samples lie beyond 2 std.
  assert 0.03 < np.mean(np.abs(kernel) > 2 * std) < 0.065


def test_bn_gamma_is_one_everywhere():
  variables = _tiny().init(jax.random.key(0), jnp.zeros((1, 32, 16, 3)),
                           train=False)
  flat = flax.traverse_util.flatten_dict(variables["params"])
  scales = [v for path, v in flat.items() if path[-1] == "scale"]
  assert len(scales) == 1 + 4 * 4  # stem + 3 BNs and a downsample BN/stage
  for scale in scales:
    np.testing.assert_array_equal(scale, 1.0)


def test_rejects_bad_last_stride():
  with pytest.raises(ValueError, match="last_stride"):
    _tiny(last_stride=3).init(jax.random.key(0), jnp.zeros((1, 32, 16, 3)),
                              train=False)
