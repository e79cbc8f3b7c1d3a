"""Tests for reidjax.backbones.densenet (no torch; see test_torchvision_import).

Full-size DenseNet-121 checks use ``jax.eval_shape``; real forward passes use
a tiny network. Equivalence with a PyTorch DenseNet-121 is tested in
``test_torchvision_import.py``.
"""

import functools

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from reidjax.backbones import densenet
from reidjax.backbones.densenet import DenseLayer
from reidjax.backbones.densenet import DenseNet
from reidjax.backbones.densenet import Transition
from reidjax.backbones.densenet import densenet121
from reidjax.backbones import registry
from tests.backbones.util import abstract_init, num_entries, random_variables

_DN = ("NHWC", "HWIO", "NHWC")
_EPS = 1e-5


def _tiny(**kwargs):
  return DenseNet(growth_rate=4, block_config=(2, 1, 1, 2),
                  num_init_features=8, bn_size=2, **kwargs)


def _variables(model, shape, seed=0):
  return random_variables(abstract_init(model, shape), seed)


# One compiled program per forward: eager (op-by-op) execution compiles every
# op on its own and is much slower on a busy 2-core machine.
def _apply(model, variables, x, train=False):
  if train:
    return jax.jit(functools.partial(model.apply, train=True,
                                     mutable=["batch_stats"]))(variables, x)
  return jax.jit(functools.partial(model.apply, train=False))(variables, x)


def _bn_channels_by_hand(growth=32, blocks=(6, 12, 24, 16), init=64,
                         bn_size=4):
  """BN channels of DenseNet-BC: stem, 2 BNs per layer, transitions, norm5."""
  total, channels = init, init  # norm0
  for i, n in enumerate(blocks):
    for l in range(n):
      total += channels + l * growth  # norm1 sees the concatenation so far
      total += bn_size * growth       # norm2
    channels += n * growth
    if i < 3:
      total += channels               # transition norm
      channels //= 2
  return total + channels             # norm5


def test_densenet121_parameter_count():
  variables = abstract_init(densenet121())
  # torchvision densenet121: 7,978,856 minus classifier (1024 * 1000 + 1000).
  assert num_entries(variables["params"]) == 7_978_856 - 1_025_000 == 6_953_856


def test_densenet121_batch_stats_match_bn_channels():
  variables = abstract_init(densenet121())
  bn_channels = sum(
      int(np.prod(leaf.shape))
      for path, leaf in flax.traverse_util.flatten_dict(
          variables["params"]).items() if path[-1] == "scale")
  assert bn_channels == _bn_channels_by_hand() == 41_824
  assert num_entries(variables["batch_stats"]) == 2 * 41_824


def test_densenet121_module_names():
  params = abstract_init(densenet121())["params"]
  assert sorted(params) == sorted(
      ["conv0", "norm0", "norm5"] + [f"denseblock{i}" for i in range(1, 5)]
      + [f"transition{i}" for i in range(1, 4)])
  assert sorted(params["denseblock3"]) == sorted(
      f"denselayer{l}" for l in range(1, 25))
  layer = params["denseblock4"]["denselayer16"]
  assert sorted(layer) == ["conv1", "conv2", "norm1", "norm2"]
  # Block 4 starts at 512 channels; layer 16 sees 512 + 15 * 32 = 992.
  chex.assert_shape(layer["norm1"]["scale"], (992,))
  chex.assert_shape(layer["conv1"]["kernel"], (1, 1, 992, 128))
  chex.assert_shape(layer["conv2"]["kernel"], (3, 3, 128, 32))
  chex.assert_shape(params["transition3"]["conv"]["kernel"],
                    (1, 1, 1024, 512))
  chex.assert_shape(params["conv0"]["kernel"], (7, 7, 3, 64))
  assert "bias" not in params["conv0"]


@pytest.mark.parametrize("hw, maps", [
    ((256, 128), [(64, 32), (32, 16), (16, 8), (8, 4)]),
    # Odd sizes: stem ceil(h / 2) twice, transitions floor(h / 2).
    ((97, 61), [(25, 16), (12, 8), (6, 4), (3, 2)]),
])
def test_densenet121_output_shapes(hw, maps):
  model = densenet121()
  x = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
  variables = abstract_init(model)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                       variables, x)
  assert sorted(out) == ["block1", "block2", "block3", "block4", "pooled"]
  for i, (channels, hw_i) in enumerate(zip((256, 512, 1024, 1024), maps)):
    chex.assert_shape(out[f"block{i + 1}"], (2, *hw_i, channels))
  chex.assert_shape(out["pooled"], (2, 1024))


def test_tiny_forward_values_and_stats():
  model = _tiny()
  x = np.random.RandomState(1).normal(size=(2, 40, 33, 3)).astype(np.float32)
  variables = _variables(model, x.shape)
  stats = variables["batch_stats"]

  out, updates = _apply(model, variables, x, train=True)
  # Channels: 8 + 2 * 4 = 16 -> 8 -> 12 -> 6 -> 10 -> 5 -> 13.
  for name, shape in [("block1", (2, 10, 9, 16)), ("block2", (2, 5, 4, 12)),
                      ("block3", (2, 2, 2, 10)), ("block4", (2, 1, 1, 13))]:
    chex.assert_shape(out[name], shape)
    chex.assert_tree_all_finite(out[name])
  # block4 is after norm5 + ReLU; pooled is its spatial mean.
  assert float(jnp.min(out["block4"])) >= 0.0
  np.testing.assert_allclose(out["pooled"], out["block4"].mean(axis=(1, 2)),
                             rtol=1e-6)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats,
                         updates["batch_stats"])
  assert all(jax.tree.leaves(changed))  # every BN saw the batch

  out_eval, updates_eval = jax.jit(functools.partial(
      model.apply, train=False, mutable=["batch_stats"]))(variables, x)
  chex.assert_trees_all_equal(updates_eval["batch_stats"], stats)
  assert not np.allclose(out["block4"], out_eval["block4"])


def _conv(x, kernel, pad):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), pad,
                                      dimension_numbers=_DN,
                                      precision=jax.lax.Precision.HIGHEST)


def test_dense_layer_matches_reference():
  layer = DenseLayer(growth_rate=3, bn_size=2)
  x = np.random.RandomState(1).normal(size=(2, 5, 4, 7)).astype(np.float32)
  variables = _variables(layer, x.shape, seed=3)
  p, s = variables["params"], variables["batch_stats"]

  def bn(y, name):
    return ((y - s[name]["mean"]) / jnp.sqrt(s[name]["var"] + _EPS)
            * p[name]["scale"] + p[name]["bias"])

  y = _conv(jax.nn.relu(bn(x, "norm1")), p["conv1"]["kernel"], "VALID")
  y = _conv(jax.nn.relu(bn(y, "norm2")), p["conv2"]["kernel"],
            ((1, 1), (1, 1)))
  out = _apply(layer, variables, x)
  chex.assert_shape(out, (2, 5, 4, 10))
  # The input passes through unchanged in front of the new features.
  np.testing.assert_array_equal(out[..., :7], x)
  np.testing.assert_allclose(out[..., 7:], y, rtol=1e-4, atol=1e-4)
  assert float(jnp.std(y)) > 0.1


def test_transition_matches_reference_on_odd_size():
  block = Transition(features=3)
  x = np.random.RandomState(1).normal(size=(1, 5, 7, 6)).astype(np.float32)
  variables = _variables(block, x.shape, seed=4)
  p, s = variables["params"], variables["batch_stats"]
  y = ((x - s["norm"]["mean"]) / jnp.sqrt(s["norm"]["var"] + _EPS)
       * p["norm"]["scale"] + p["norm"]["bias"])
  y = np.asarray(_conv(jax.nn.relu(y), p["conv"]["kernel"], "VALID"))
  # AvgPool2d(2, 2) by hand: 2x2 means, the trailing odd row/column dropped.
  want = np.empty((1, 2, 3, 3), np.float32)
  for i in range(2):
    for j in range(3):
      want[:, i, j] = y[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(1, 2))
  out = _apply(block, variables, x)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_float32_params():
  # One layer per block: bf16 programs compile slowly on CPU.
  small = functools.partial(DenseNet, growth_rate=4, block_config=(1, 1, 1, 1),
                            num_init_features=8, bn_size=2)
  model = small(dtype=jnp.bfloat16)
  x = np.random.RandomState(1).normal(size=(2, 40, 32, 3)).astype(np.float32)
  for leaf in jax.tree.leaves(abstract_init(model, x.shape)):
    assert leaf.dtype == jnp.float32  # init makes float32 params and stats
  variables = _variables(model, x.shape)

  def loss(params):
    out, updates = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, x,
        train=True, mutable=["batch_stats"])
    return jnp.sum(out["pooled"] ** 2), (out, updates)

  grads, (out, updates) = jax.jit(jax.grad(loss, has_aux=True))(
      variables["params"])
  for name in ("block1", "block2", "block3", "block4"):
    assert out[name].dtype == jnp.bfloat16, name
  assert out["pooled"].dtype == jnp.float32
  for leaf in jax.tree.leaves((grads, updates)):
    assert leaf.dtype == jnp.float32
    chex.assert_tree_all_finite(leaf)
  # bf16 keeps ~3 significant digits: close to the float32 network.
  out32 = _apply(small(), variables, x)
  out16 = _apply(model, variables, x)
  err = np.abs(np.asarray(out16["pooled"]) - np.asarray(out32["pooled"]))
  assert err.max() / np.abs(np.asarray(out32["pooled"])).max() < 3e-2


def test_conv_init_is_kaiming_normal_fan_in():
  kernel = densenet.conv_kernel_init(jax.random.key(0), (3, 3, 128, 32))
  std = np.sqrt(2.0 / (3 * 3 * 128))  # fan_in = kh * kw * in_channels
  np.testing.assert_allclose(np.std(kernel), std, rtol=0.05)
  assert 0.03 < np.mean(np.abs(kernel) > 2 * std) < 0.065  # untruncated


def test_smallest_input_and_too_small_input():
  model = _tiny()
  x = jnp.zeros((1, densenet.MIN_INPUT_SIZE, densenet.MIN_INPUT_SIZE, 3))
  variables = _variables(model, x.shape)
  out = _apply(model, variables, x)
  chex.assert_shape(out["block4"], (1, 1, 1, 13))
  with pytest.raises(ValueError, match="at least 29x29"):
    model.apply(variables, jnp.zeros((1, 64, 28, 3)), train=False)


def test_registry_builds_densenet121():
  config = ml_collections.ConfigDict({"name": "densenet121"})
  model = registry.build_backbone(config, "bfloat16")
  assert isinstance(model, DenseNet)
  assert model.dtype == jnp.bfloat16
  assert tuple(model.block_config) == (6, 12, 24, 16)
  assert model.growth_rate == 32 and model.num_init_features == 64
  with pytest.raises(ValueError, match="densenet121"):
    registry.build_backbone(ml_collections.ConfigDict({"name": "vgg"}),
                            "float32")
