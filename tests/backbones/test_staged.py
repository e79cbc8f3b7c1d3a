"""Staged backbones: stem / stage / block pieces called from a parent module.

Checks that a parent can run ``ResNet.stem`` and ``ResNet.stage`` (also a
part of a stage) and ``DenseNet.stem`` / ``block`` / ``transition`` with its
own modules in between, that those modules' variables live outside
``backbone`` (so torchvision weights still load there), that the pieces
compose to ``__call__`` bitwise and match the PyTorch reference per stage,
and the configurable ResNet family (Attention-Driven ReID's Table 1 slim
branches, (h, w) strides). Real forwards use tiny widths; full-size trees use
``jax.eval_shape``.
"""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from reidjax.backbones import DenseNet
from reidjax.backbones import ResNet
from reidjax.backbones import attdriven_branch
from reidjax.backbones import resnet50
from reidjax.backbones import torch_reference
from reidjax.backbones import torchvision_import
from tests.backbones.util import abstract_init, num_entries, random_variables

torch.set_num_threads(min(2, torch.get_num_threads()))


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def _shapes(tree):
  return {path: tuple(leaf.shape) for path, leaf in _flat(tree).items()}


def _random_variables(model, shape, *args, seed=0):
  """Generic random variables of ``model`` (``util.random_variables``)."""
  return random_variables(jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, *args),
      jax.ShapeDtypeStruct(shape, jnp.float32)), seed)


def _sub(variables, scope):
  """The variables of submodule ``scope`` (every collection that has it)."""
  return {c: tree[scope] for c, tree in variables.items() if scope in tree}


def _rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.max(np.abs(got - want)) / np.max(np.abs(want))


class _ResidualConv(nn.Module):
  """``x + conv1x1(x)``: a stand-in for an inserted attention/non-local block."""

  @nn.compact
  def __call__(self, x):
    return x + nn.Conv(x.shape[-1], (1, 1), use_bias=False)(x)


class _FieldParent(nn.Module):
  """Holds the backbone as a field (as the ReID models do); inserts in setup."""

  backbone: nn.Module
  insert_after_stage: int = 0  # 0: no insertion

  def setup(self):
    if self.insert_after_stage:
      self.inserted = _ResidualConv()

  def __call__(self, images, train: bool):
    x = self.backbone.stem(images, train)
    out = {}
    for index in range(1, 5):
      x = self.backbone.stage(index, x, train)
      out[f"stage{index}"] = x  # the stage's own output
      if index == self.insert_after_stage:
        x = self.inserted(x)
    return out


class _CaceLikeParent(nn.Module):
  """@nn.compact parent: a module after the second-to-last block of stages 2-4."""

  stage_sizes: tuple[int, ...] = (1, 2, 3, 1)

  @nn.compact
  def __call__(self, images, train: bool):
    backbone = ResNet(stage_sizes=self.stage_sizes, width=4, name="backbone")
    x = backbone.stem(images, train)
    out = {}
    for index in range(1, 5):
      if index == 1:
        x = backbone.stage(1, x, train)
      else:
        x = backbone.stage(index, x, train, blocks=slice(0, -1))
        x = _ResidualConv(name=f"nonlocal{index}")(x)
        x = backbone.stage(index, x, train, blocks=slice(-1, None))
      out[f"stage{index}"] = x
    return out


def _tiny_resnet(**kwargs):
  return ResNet(**{"stage_sizes": (1, 2, 1, 1), "width": 8, **kwargs})


# ---------------------------------------------------------------------------
# (a) A module inserted between stages.


def test_module_after_stage3_changes_only_stage4():
  backbone = _tiny_resnet()
  parent = _FieldParent(backbone, insert_after_stage=3)
  x = jax.random.normal(jax.random.key(1), (2, 32, 16, 3))
  variables = _random_variables(parent, x.shape, False)

  # The inserted conv lives beside the backbone, whose tree is exactly the
  # stand-alone ResNet's (so a torchvision file fits it unchanged).
  assert set(variables["params"]) == {"backbone", "inserted"}
  assert set(variables["batch_stats"]) == {"backbone"}
  alone = abstract_init(backbone, x.shape)
  assert _shapes(_sub(variables, "backbone")) == _shapes(alone)
  assert not any("inserted" in path for path in _flat(alone))

  backbone_variables = _sub(variables, "backbone")
  for train in (False, True):
    kwargs = dict(train=train, mutable=["batch_stats"])
    got, got_updates = jax.jit(functools.partial(parent.apply, **kwargs))(
        variables, x)
    want, want_updates = jax.jit(functools.partial(backbone.apply, **kwargs))(
        backbone_variables, x)
    for name in ("stage1", "stage2", "stage3"):
      np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert got["stage4"].shape == want["stage4"].shape == (2, 2, 1, 256)
    assert np.max(np.abs(got["stage4"] - want["stage4"])) > 1e-2 * np.max(
        np.abs(want["stage4"]))

    # BatchNorm updates go to backbone only; layers 1-3 saw the same inputs.
    assert set(got_updates["batch_stats"]) == {"backbone"}
    got_stats = _flat(got_updates["batch_stats"]["backbone"])
    want_stats = _flat(want_updates["batch_stats"])
    assert got_stats.keys() == want_stats.keys()
    for path, value in got_stats.items():
      if path[0].startswith("layer4") and train:
        assert not np.allclose(value, want_stats[path]), path
      else:
        np.testing.assert_array_equal(value, want_stats[path],
                                      err_msg=str(path))


def test_modules_inside_stages_from_a_compact_parent():
  parent = _CaceLikeParent()
  x = jax.random.normal(jax.random.key(2), (2, 32, 16, 3))
  variables = _random_variables(parent, x.shape, False, seed=4)
  assert set(variables["params"]) == {"backbone", "nonlocal2", "nonlocal3",
                                      "nonlocal4"}
  backbone = ResNet(stage_sizes=(1, 2, 3, 1), width=4)
  backbone_variables = _sub(variables, "backbone")
  assert _shapes(backbone_variables) == _shapes(abstract_init(backbone,
                                                              x.shape))

  apply_parent = jax.jit(functools.partial(parent.apply, train=False))
  want = jax.jit(functools.partial(backbone.apply, train=False))(
      backbone_variables, x)
  got = apply_parent(variables, x)
  np.testing.assert_array_equal(got["stage1"], want["stage1"])
  for name in ("stage2", "stage3", "stage4"):
    assert got[name].shape == want[name].shape
    assert not np.allclose(got[name], want[name], rtol=1e-2, atol=1e-2), name

  # With zero inserted kernels (x + 0 = x) the split stages are the whole
  # stages, block by block in order: the outputs equal __call__ bitwise.
  # Stage 4 has one block, so its first part is empty.
  zeroed = flax.core.unfreeze(variables)
  for index in (2, 3, 4):
    kernel = zeroed["params"][f"nonlocal{index}"]["Conv_0"]["kernel"]
    zeroed["params"][f"nonlocal{index}"]["Conv_0"]["kernel"] = (
        jnp.zeros_like(kernel))
  got = apply_parent(zeroed, x)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_parent_init_and_train_apply_with_mutable_batch_stats():
  # Real init (not eval_shape) through the staged methods, then a train step.
  parent = _CaceLikeParent(stage_sizes=(1, 1, 2, 1))
  x = jax.random.normal(jax.random.key(3), (2, 32, 16, 3))
  variables = jax.jit(functools.partial(parent.init, train=False))(
      jax.random.key(0), x)
  out, updates = jax.jit(functools.partial(
      parent.apply, train=True, mutable=["batch_stats"]))(variables, x)
  assert out["stage4"].shape == (2, 2, 1, 128)
  assert set(updates["batch_stats"]) == {"backbone"}
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                         variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree.leaves(changed))  # every BN of the backbone saw a batch


def test_stage_block_selection_and_errors():
  backbone = ResNet(stage_sizes=(1, 1, 3, 1), width=4)
  x = jax.random.normal(jax.random.key(4), (1, 32, 16, 3))
  variables = _random_variables(backbone, x.shape, False, seed=5)

  def run(method):
    return backbone.apply(variables, x, method=method)

  def by_blocks(module, images):
    h = module.stage(2, module.stage(1, module.stem(images, False), False),
                     False)
    whole = module.stage(3, h, False)
    one_by_one = h
    for j in (0, -2, 2):  # int indices, negative ones counted from the end
      one_by_one = module.stage(3, one_by_one, False, blocks=j)
    return whole, one_by_one, module.stage(3, h, False, blocks=slice(1, 1))

  whole, one_by_one, empty = jax.jit(lambda: run(by_blocks))()
  np.testing.assert_array_equal(one_by_one, whole)
  assert empty.shape == (1, 4, 2, 32)  # the stage-2 map, untouched

  def stage(index, blocks=slice(None)):
    return lambda module, images: module.stage(index, module.stem(
        images, False), False, blocks=blocks)

  with pytest.raises(ValueError, match="stage index must be 1..4, got 5"):
    run(stage(5))
  with pytest.raises(ValueError, match="Block 3 does not exist in stage 3"):
    run(stage(3, 3))
  with pytest.raises(ValueError, match="step 1"):
    run(stage(3, slice(None, None, 2)))


# ---------------------------------------------------------------------------
# (b) torchvision weights load into the staged ResNet; torch equivalence.


def test_staged_resnet_matches_torch_per_stage_and_call_bitwise():
  torch.manual_seed(5)
  tmodel = torch_reference.ResNet((1, 2, 1, 1), width=8, last_stride=2)
  torch_reference.randomize_batchnorm_(tmodel, seed=5).eval()
  backbone = ResNet((1, 2, 1, 1), width=8, last_stride=2)
  parent = _FieldParent(backbone)
  # Odd and even sizes, so the stem's ceil rounding matters.
  x = np.random.RandomState(2).normal(size=(2, 3, 61, 46)).astype(np.float32)
  x_nhwc = x.transpose(0, 2, 3, 1)

  abstract = jax.eval_shape(
      lambda x: parent.init(jax.random.key(0), x, train=False),
      jax.ShapeDtypeStruct(x_nhwc.shape, jnp.float32))
  state_dict = {k: v.numpy() for k, v in tmodel.state_dict().items()}
  loaded = torchvision_import.convert_state_dict(
      state_dict, "resnet50", _sub(abstract, "backbone"))
  variables = {c: {"backbone": tree} for c, tree in loaded.items()}

  staged = jax.jit(functools.partial(parent.apply, train=False))(variables,
                                                                 x_nhwc)
  called = jax.jit(functools.partial(backbone.apply, train=False))(loaded,
                                                                   x_nhwc)
  with torch.no_grad():
    h = tmodel.maxpool(tmodel.relu(tmodel.bn1(tmodel.conv1(
        torch.from_numpy(x)))))
    for index in range(1, 5):
      h = getattr(tmodel, f"layer{index}")(h)
      name = f"stage{index}"
      want = h.numpy().transpose(0, 2, 3, 1)
      assert staged[name].shape == want.shape, name
      assert _rel_err(staged[name], want) <= 1e-5, name
      np.testing.assert_array_equal(staged[name], called[name], err_msg=name)
  assert staged["stage4"].shape == (2, 2, 2, 256)


def test_full_size_torchvision_tree_is_the_backbone_scope_of_a_parent():
  # ResNet-50 with a module inserted after stage 3: params["backbone"] is
  # the tree a torchvision file converts to (same paths and shapes).
  parent = _FieldParent(resnet50(last_stride=2), insert_after_stage=3)
  abstract = abstract_init(parent, (1, 64, 64, 3))
  torchvision_tree = torchvision_import.abstract_variables("resnet50")
  assert _shapes(_sub(abstract, "backbone")) == _shapes(torchvision_tree)
  assert num_entries(abstract["params"]["backbone"]) == 23_508_032
  assert num_entries(abstract["params"]["inserted"]) == 1024 * 1024


# ---------------------------------------------------------------------------
# (c) Attention-Driven ReID Table 1 slim branches.

# Table 1, one bottleneck per stage as [(kernel, channels)] * 3; the stage
# repeats it 3 times. Conv1 is 3x3, 32, stride 2 in both branches.
_TABLE1 = {
    "global": [[(1, 32), (3, 32), (1, 64)], [(1, 64), (3, 64), (1, 128)],
               [(1, 128), (3, 128), (1, 256)], [(1, 256), (3, 256), (1, 512)]],
    "part": [[(1, 16), (3, 16), (1, 32)], [(1, 32), (3, 32), (1, 64)],
             [(1, 64), (3, 64), (1, 128)], [(1, 128), (3, 128), (1, 256)]],
}


def _table1_parameters(kind):
  """Conv weights + BN (scale, bias) of a Table 1 branch, from the table."""
  def conv_bn(kernel, c_in, c_out):
    return kernel * kernel * c_in * c_out + 2 * c_out

  channels = 32
  total = conv_bn(3, 3, channels)  # Conv1; the max pool has no parameters
  # Stage strides: Conv3_x and Conv4_x halve, Conv5_x keeps (last stride 1).
  for block, stride in zip(_TABLE1[kind], (1, 2, 2, 1)):
    for repeat in range(3):
      c_in = channels
      for kernel, c_out in block:
        total += conv_bn(kernel, channels, c_out)
        channels = c_out
      # Projection shortcut where the shape changes (not in the part
      # branch's Conv2_x: 32 -> 32 channels at stride 1).
      if repeat == 0 and (stride != 1 or c_in != channels):
        total += conv_bn(1, c_in, channels)
  return total


@pytest.mark.parametrize("kind, image, count, maps", [
    ("global", (384, 192), 3_495_968,
     [(96, 48, 64), (48, 24, 128), (24, 12, 256), (24, 12, 512)]),
    ("part", (96, 192), 877_728,
     [(48, 48, 32), (24, 24, 64), (12, 12, 128), (12, 12, 256)]),
])
def test_attdriven_branch_parameters_and_maps(kind, image, count, maps):
  model = attdriven_branch(kind)
  variables = abstract_init(model, (2, *image, 3))
  assert num_entries(variables["params"]) == _table1_parameters(kind) == count
  # BN statistics: one (mean, var) pair per BN channel, i.e. per scale.
  bn_channels = sum(int(np.prod(leaf.shape))
                    for path, leaf in _flat(variables["params"]).items()
                    if path[-1] == "scale")
  assert num_entries(variables["batch_stats"]) == 2 * bn_channels
  kernel = variables["params"]["conv1"]["kernel"]
  assert kernel.shape == (3, 3, 3, 32)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                       jax.ShapeDtypeStruct((2, *image, 3), jnp.float32))
  assert [out[f"stage{i}"].shape for i in range(1, 5)] == [
      (2, *m) for m in maps]


def test_attdriven_branch_rejects_unknown_kind():
  with pytest.raises(ValueError, match="'global' or 'part'"):
    attdriven_branch("head")


class _SharedStemParent(nn.Module):
  """Attention-Driven's shared Conv1: one branch's conv, every branch's pool."""

  @nn.compact
  def __call__(self, whole, part, train: bool):
    small = dict(stage_sizes=(1, 1, 1, 1), width=4)
    branch_g = attdriven_branch("global", stage_widths=(2, 2, 2, 2),
                                name="global_branch", **small)
    branch_p = attdriven_branch("part", stage_widths=(1, 1, 1, 1),
                                name="part_branch", **small)
    g = branch_g.stem_pool(branch_g.stem_conv(whole, train))
    p = branch_p.stem_pool(branch_g.stem_conv(part, train))
    return g, branch_g(whole, train), p, branch_p.stage(1, p, train)


def test_shared_stem_conv_leaves_the_other_branch_without_one():
  parent = _SharedStemParent()
  whole = jnp.ones((1, 48, 24, 3))
  part = jnp.ones((1, 12, 24, 3))
  abstract = jax.eval_shape(
      lambda w, p: parent.init(jax.random.key(0), w, p, train=False),
      whole, part)
  assert "conv1" in abstract["params"]["global_branch"]
  assert "conv1" not in abstract["params"]["part_branch"]
  assert "bn1" not in abstract["params"]["part_branch"]
  g, g_out, p, p_stage1 = jax.eval_shape(
      lambda v, w, p: parent.apply(v, w, p, train=False), abstract, whole,
      part)
  assert g.shape == (1, 12, 6, 4)
  assert g_out["stage4"].shape == (1, 3, 2, 4)
  assert p.shape == (1, 6, 6, 4)  # 12x24 -> conv 6x12 -> pool (1, 2) 6x6
  assert p_stage1.shape == (1, 6, 6, 2)


# ---------------------------------------------------------------------------
# (e) (h, w) strides.


def test_tuple_strides_give_expected_map_shapes():
  model = ResNet(stage_sizes=(1, 1, 1, 1), width=4,
                 stage_strides=((1, 2), 2, (2, 1)), last_stride=(1, 2),
                 stem_pool_strides=(1, 2))
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  variables = abstract_init(model, x.shape)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                       variables, x)
  # stem: conv /2 -> 32x32, pool (1, 2) -> 32x16; then (1, 2), 2, (2, 1),
  # (1, 2): 32x8, 16x4, 8x4, 8x2.
  assert out["stage1"].shape == (2, 32, 8, 16)
  assert out["stage2"].shape == (2, 16, 4, 32)
  assert out["stage3"].shape == (2, 8, 4, 64)
  assert out["stage4"].shape == (2, 8, 2, 128)
  assert model.strides_per_stage == ((1, 2), (2, 2), (2, 1), (1, 2))
  assert model.stage_features == (16, 32, 64, 128)


def _max_pool_3x3_pad1(x, strides):
  """NumPy reference of torch MaxPool2d(3, strides, padding=1), NHWC."""
  n, h, w, c = x.shape
  sh, sw = strides
  xp = np.full((n, h + 2, w + 2, c), -np.inf, x.dtype)
  xp[:, 1:-1, 1:-1] = x
  ho, wo = (h - 1) // sh + 1, (w - 1) // sw + 1
  out = np.empty((n, ho, wo, c), x.dtype)
  for i in range(ho):
    for j in range(wo):
      out[:, i, j] = xp[:, sh * i:sh * i + 3, sw * j:sw * j + 3].max(
          axis=(1, 2))
  return out


def test_stem_pool_with_1x2_stride_matches_reference():
  model = attdriven_branch("part")
  x = np.random.RandomState(3).normal(size=(2, 7, 10, 4)).astype(np.float32)
  got = model.apply({}, x, method=lambda m, x: m.stem_pool(x))
  want = _max_pool_3x3_pad1(x, (1, 2))
  assert got.shape == want.shape == (2, 7, 5, 4)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fields, match", [
    (dict(stage_strides=(1, 2, 2, 1)), "stage_strides gives the strides of "
     "stages 1-3"),
    (dict(stage_strides=(1, (1, 3), 2)), r"stage_strides\[1\] must be 1, 2"),
    (dict(stem_pool_strides=(2, 2, 1)), "stem_pool_strides must be"),
    (dict(stage_widths=(8, 16)), "stage_widths needs 4 widths"),
    (dict(stem_kernel_size=4), "stem_kernel_size must be odd"),
])
def test_rejects_bad_fields(fields, match):
  with pytest.raises(ValueError, match=match):
    abstract_init(ResNet(stage_sizes=(1, 1, 1, 1), width=4, **fields),
                  (1, 32, 16, 3))


# ---------------------------------------------------------------------------
# DenseNet pieces.


class _DenseParent(nn.Module):
  backbone: nn.Module
  insert: bool = True

  @nn.compact
  def __call__(self, images, train: bool):
    x = self.backbone.stem(images, train)
    out = {}
    for index in range(1, 5):
      x = self.backbone.block(index, x, train)
      out[f"block{index}"] = x
      if index < 4:
        x = self.backbone.transition(index, x, train)
      if index == 2 and self.insert:
        x = _ResidualConv(name="inserted")(x)
    return out


def test_densenet_pieces_compose_and_insert():
  backbone = DenseNet(4, (2, 1, 1, 2), 8, bn_size=2)
  x = jax.random.normal(jax.random.key(6), (2, 33, 30, 3))
  parent = _DenseParent(backbone)
  variables = _random_variables(parent, x.shape, False, seed=7)
  assert set(variables["params"]) == {"backbone", "inserted"}
  backbone_variables = _sub(variables, "backbone")
  assert _shapes(backbone_variables) == _shapes(abstract_init(backbone,
                                                              x.shape))
  # 8 + 2 * 4 = 16 -> 8; 8 + 4 = 12 -> 6; 6 + 4 = 10 -> 5; 5 + 2 * 4 = 13.
  assert backbone.block_features == (16, 12, 10, 13)

  want = jax.jit(functools.partial(backbone.apply, train=False))(
      backbone_variables, x)
  plain = jax.jit(functools.partial(_DenseParent(backbone, insert=False).apply,
                                    train=False))(
      {c: {"backbone": t} for c, t in backbone_variables.items()}, x)
  got = jax.jit(functools.partial(parent.apply, train=False))(variables, x)
  for name in ("block1", "block2", "block3", "block4"):
    np.testing.assert_array_equal(plain[name], want[name], err_msg=name)
    assert got[name].shape == want[name].shape
  for name in ("block1", "block2"):
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  for name in ("block3", "block4"):
    assert not np.allclose(got[name], want[name], rtol=1e-2, atol=1e-2), name

  with pytest.raises(ValueError, match="transition index must be 1..3"):
    backbone.apply(backbone_variables, x, train=False,
                   method=lambda m, x, train: m.transition(4, x, train))
