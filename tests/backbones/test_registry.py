"""Tests for reidjax.backbones.registry (build_backbone, last_feature_map)."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from reidjax.backbones import DenseNet
from reidjax.backbones import ResNet
from reidjax.backbones import build_backbone
from reidjax.backbones import compute_dtype
from reidjax.backbones import last_feature_map
from reidjax.backbones import registry
from tests.backbones.util import abstract_init


def _config(**entries):
  return ml_collections.ConfigDict(entries)


def test_defaults_come_from_the_module_fields_only():
  # An empty section is exactly the module with its own defaults.
  assert build_backbone(_config(name="resnet50"), "float32") == ResNet()
  assert build_backbone(_config(name="resnet"), "float32") == ResNet()
  assert build_backbone(_config(name="densenet121"), "float32") == DenseNet()
  # Every option reaches its field; weight-loading keys do not.
  model = build_backbone(
      _config(name="resnet50", stage_sizes=(1, 1, 1, 1), width=16,
              last_stride=2, pretrained="/weights/resnet50.pth",
              from_scratch=False), "bfloat16")
  assert model == ResNet(stage_sizes=(1, 1, 1, 1), width=16, last_stride=2,
                         dtype=jnp.bfloat16)


def test_config_names_in_use_shape_the_networks():
  resnet = build_backbone(_config(name="resnet50", stage_sizes=(1, 1, 1, 1),
                                  width=4, last_stride=1), "float32")
  params = abstract_init(resnet, (1, 64, 32, 3))["params"]
  assert sorted(k for k in params if k.startswith("layer")) == [
      "layer1_0", "layer2_0", "layer3_0", "layer4_0"]
  assert params["conv1"]["kernel"].shape == (7, 7, 3, 4)
  assert params["layer4_0"]["conv3"]["kernel"].shape == (1, 1, 32, 128)

  densenet = build_backbone(_config(name="densenet121", growth_rate=4,
                                    block_config=(1, 1, 1, 2),
                                    num_init_features=8), "float32")
  params = abstract_init(densenet, (1, 32, 32, 3))["params"]
  assert params["conv0"]["kernel"].shape == (7, 7, 3, 8)
  assert sorted(params["denseblock4"]) == ["denselayer1", "denselayer2"]
  # conv1: 8 stem channels -> bn_size (4) * growth; conv2 -> growth.
  layer = params["denseblock1"]["denselayer1"]
  assert layer["conv1"]["kernel"].shape == (1, 1, 8, 16)
  assert layer["conv2"]["kernel"].shape == (3, 3, 16, 4)


def test_lists_become_tuples_and_other_fields_are_options():
  model = build_backbone(
      {"name": "resnet", "stage_sizes": [3, 3, 3, 3], "width": 32,
       "stage_widths": [16, 32, 64, 128], "expansion": 2,
       "stage_strides": [1, [2, 2], 2], "stem_kernel_size": 3,
       "stem_pool_strides": [1, 2]}, "float32")
  assert model.stage_sizes == (3, 3, 3, 3)
  assert model.stage_strides == (1, (2, 2), 2)
  assert model.stem_pool_strides == (1, 2)
  hash(model)  # module fields must be hashable
  assert model.stage_features == (32, 64, 128, 256)


def test_misspelt_option_is_a_clear_error():
  with pytest.raises(ValueError) as info:
    build_backbone(_config(name="resnet50", widht=16), "float32")
  message = str(info.value)
  assert "model.backbone.widht is not an option of backbone 'resnet50'" in (
      message)
  assert "did you mean 'width'?" in message
  accepted = [f.name for f in dataclasses.fields(ResNet)
              if f.name not in ("parent", "name", "dtype")]
  assert f"Accepted: {accepted}" in message
  assert "'stage_sizes'" in message and "'last_stride'" in message

  with pytest.raises(ValueError, match="growth_rat'.*'growth_rate'"):
    build_backbone(_config(name="densenet121", growth_rat=8), "float32")
  # A ResNet option is not a DenseNet option.
  with pytest.raises(ValueError, match="model.backbone.width is not an option "
                     "of backbone 'densenet121'"):
    build_backbone(_config(name="densenet121", width=8), "float32")
  with pytest.raises(ValueError, match="dtype is model.dtype"):
    build_backbone(_config(name="resnet50", dtype="bfloat16"), "float32")


def test_unknown_name_and_dtype():
  with pytest.raises(ValueError, match=r"Unknown model.backbone.name 'vgg'; "
                     r"known: \['densenet121', 'resnet', 'resnet50'\]"):
    build_backbone(_config(name="vgg"), "float32")
  with pytest.raises(ValueError, match="needs a name"):
    build_backbone(_config(width=8), "float32")
  with pytest.raises(ValueError, match=r"model.dtype must be one of "
                     r"\['bfloat16', 'float32'\], got 'float16'"):
    build_backbone(_config(name="resnet50"), "float16")
  assert compute_dtype("bfloat16") == jnp.bfloat16
  assert compute_dtype("float32") == jnp.float32


def test_last_feature_map_is_a_key_of_the_output():
  assert last_feature_map("resnet50") == "stage4"
  assert last_feature_map("resnet") == "stage4"
  assert last_feature_map("densenet121") == "block4"
  with pytest.raises(ValueError, match="Unknown model.backbone.name 'vit'"):
    last_feature_map("vit")
  for name, options, size in [
      ("resnet50", dict(stage_sizes=(1, 1, 1, 1), width=4), 32),
      ("densenet121", dict(growth_rate=4, block_config=(1, 1, 1, 1),
                           num_init_features=8), 32)]:
    model = build_backbone(_config(name=name, **options), "float32")
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                         abstract_init(model, x.shape), x)
    assert last_feature_map(name) in out
  assert set(registry.BACKBONES) == {"resnet50", "resnet", "densenet121"}
