"""PyTorch ResNet-50 and DenseNet-121 references with torchvision's names.

Written from the torchvision architecture description (not copied from its
source) so that tests and ``benchmarks/backbone_speed.py`` can build the
networks without torchvision, which has no CPU build in our environments.
The ``state_dict`` keys and tensor shapes are those of
``torchvision.models.resnet50`` / ``densenet121`` (new key style,
``denselayer1.norm1``), which is what ``torchvision_import`` reads.

Needs torch: ``reidjax.backbones`` does not import this module.

Both models' ``forward_features(x)`` take (N, 3, H, W) images and return
the final feature map in NCHW; ``forward`` adds global average pooling and the
classifier, as torchvision does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn


class Bottleneck(nn.Module):
  """ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""

  expansion = 4

  def __init__(self, in_channels: int, width: int, stride: int = 1):
    super().__init__()
    out_channels = width * self.expansion
    self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1,
                           bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out_channels)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = None
    if stride != 1 or in_channels != out_channels:
      self.downsample = nn.Sequential(
          nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
          nn.BatchNorm2d(out_channels))

  def forward(self, x):
    shortcut = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + shortcut)


class ResNet(nn.Module):
  """torchvision-style bottleneck ResNet (``resnet50()`` by default).

  Args:
    stage_sizes: blocks in ``layer1..layer4``.
    width: stem width; stage ``i`` has bottleneck width ``width * 2**i``.
    last_stride: stride of ``layer4`` (2 = ImageNet, 1 = ReID).
    num_classes: outputs of ``fc``.
  """

  def __init__(self, stage_sizes: Sequence[int] = (3, 4, 6, 3),
               width: int = 64, last_stride: int = 2,
               num_classes: int = 1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    in_channels = width
    for i, num_blocks in enumerate(stage_sizes):
      stride = 1 if i == 0 else (last_stride if i == 3 else 2)
      blocks = []
      for j in range(num_blocks):
        blocks.append(Bottleneck(in_channels, width * 2**i,
                                 stride if j == 0 else 1))
        in_channels = width * 2**i * Bottleneck.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(in_channels, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out",
                                nonlinearity="relu")

  def forward_features(self, x):
    """(N, 3, H, W) -> ``layer4`` output (N, 2048, h, w)."""
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))

  def forward(self, x):
    return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


class DenseLayer(nn.Module):
  """BN-ReLU-conv1x1-BN-ReLU-conv3x3; returns only the new features."""

  def __init__(self, in_channels: int, growth_rate: int, bn_size: int):
    super().__init__()
    self.norm1 = nn.BatchNorm2d(in_channels)
    self.relu1 = nn.ReLU(inplace=True)
    self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, 1, bias=False)
    self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
    self.relu2 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1,
                           bias=False)

  def forward(self, x):
    y = self.conv1(self.relu1(self.norm1(x)))
    return self.conv2(self.relu2(self.norm2(y)))


class DenseBlock(nn.ModuleDict):
  """Dense layers ``denselayer1..``, each fed the concatenation so far."""

  def __init__(self, num_layers: int, in_channels: int, growth_rate: int,
               bn_size: int):
    super().__init__()
    for l in range(num_layers):
      self[f"denselayer{l + 1}"] = DenseLayer(
          in_channels + l * growth_rate, growth_rate, bn_size)

  def forward(self, x):
    for layer in self.values():
      x = torch.cat([x, layer(x)], dim=1)
    return x


class Transition(nn.Sequential):
  """BN-ReLU-conv1x1-avgpool 2x2/2 (``norm``, ``relu``, ``conv``, ``pool``)."""

  def __init__(self, in_channels: int, out_channels: int):
    super().__init__(OrderedDict([
        ("norm", nn.BatchNorm2d(in_channels)),
        ("relu", nn.ReLU(inplace=True)),
        ("conv", nn.Conv2d(in_channels, out_channels, 1, bias=False)),
        ("pool", nn.AvgPool2d(2, stride=2)),
    ]))


class DenseNet(nn.Module):
  """torchvision-style DenseNet-BC (``densenet121()`` by default)."""

  def __init__(self, growth_rate: int = 32,
               block_config: Sequence[int] = (6, 12, 24, 16),
               num_init_features: int = 64, bn_size: int = 4,
               compression: float = 0.5, num_classes: int = 1000):
    super().__init__()
    layers = OrderedDict([
        ("conv0", nn.Conv2d(3, num_init_features, 7, stride=2, padding=3,
                            bias=False)),
        ("norm0", nn.BatchNorm2d(num_init_features)),
        ("relu0", nn.ReLU(inplace=True)),
        ("pool0", nn.MaxPool2d(3, stride=2, padding=1)),
    ])
    channels = num_init_features
    for i, num_layers in enumerate(block_config):
      layers[f"denseblock{i + 1}"] = DenseBlock(num_layers, channels,
                                                growth_rate, bn_size)
      channels += num_layers * growth_rate
      if i < len(block_config) - 1:
        layers[f"transition{i + 1}"] = Transition(
            channels, int(channels * compression))
        channels = int(channels * compression)
    layers["norm5"] = nn.BatchNorm2d(channels)
    self.features = nn.Sequential(layers)
    self.classifier = nn.Linear(channels, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight)
      elif isinstance(m, nn.Linear):
        nn.init.constant_(m.bias, 0)

  def forward_features(self, x):
    """(N, 3, H, W) -> ReLU(norm5(block 4)), (N, 1024, h, w)."""
    return torch.relu(self.features(x))

  def forward(self, x):
    pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(
        self.forward_features(x), 1), 1)
    return self.classifier(pooled)


def resnet50(last_stride: int = 2) -> ResNet:
  return ResNet((3, 4, 6, 3), 64, last_stride=last_stride)


def densenet121() -> DenseNet:
  return DenseNet(32, (6, 12, 24, 16), 64, bn_size=4, compression=0.5)


@torch.no_grad()
def randomize_batchnorm_(model: nn.Module, seed: int = 0) -> nn.Module:
  """Gives every BN random affine terms and running statistics, in place.

  Freshly built BNs have gamma 1, beta 0, mean 0, var 1, under which an
  eval-mode BN is (nearly) the identity and a mapping mistake in BN
  parameters would go unnoticed. The ranges keep activations of a deep net
  at a sane scale.
  """
  gen = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      n = m.num_features
      m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
      m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
      m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
      m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
      m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,),
                                                    generator=gen)))
  return model
