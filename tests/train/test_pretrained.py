"""create_train_state starts the backbone from a torchvision file when asked."""

import jax
import ml_collections
import numpy as np
import torch

from reidjax.backbones import torch_reference
from reidjax.models import build_model
from reidjax import sharding
from reidjax.train import optimizer, state as state_lib


def test_pretrained_backbone_replaces_only_the_backbone(tmp_path):
  torch.manual_seed(0)
  reference = torch_reference.randomize_batchnorm_(torch_reference.resnet50(last_stride=1))
  path = tmp_path / "resnet50.pth"
  torch.save(reference.state_dict(), path)
  weights = {k: v.numpy() for k, v in reference.state_dict().items()}

  config = ml_collections.ConfigDict(dict(
      name="baseline", dtype="float32", embed_feature="bn",
      backbone=dict(name="resnet50", stage_sizes=(3, 4, 6, 3), width=64, last_stride=1,
                    pretrained=str(path))))
  model = build_model(config, num_classes=7)
  tx = optimizer.make_optimizer(ml_collections.ConfigDict(dict(name="adam")), 1e-3)
  mesh = sharding.make_data_mesh()
  data = ml_collections.ConfigDict(dict(height=64, width=32, video=False))
  kwargs = dict(seed=3, data_config=data, mesh=mesh)
  state = state_lib.create_train_state(model, tx, backbone_config=config.backbone, **kwargs)
  fresh = state_lib.create_train_state(model, tx, **kwargs)

  backbone = state.params["backbone"]
  np.testing.assert_array_equal(backbone["conv1"]["kernel"],
                                weights["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(backbone["layer4_2"]["bn3"]["scale"],
                                weights["layer4.2.bn3.weight"])
  np.testing.assert_array_equal(state.batch_stats["backbone"]["layer3_0"]["downsample_bn"]["var"],
                                weights["layer3.0.downsample.1.running_var"])
  # The head keeps its own initialisation; the optimizer state matches the new params.
  np.testing.assert_array_equal(state.params["classifier"]["kernel"],
                                fresh.params["classifier"]["kernel"])
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(fresh.opt_state)
  assert not np.array_equal(backbone["conv1"]["kernel"], fresh.params["backbone"]["conv1"]["kernel"])
