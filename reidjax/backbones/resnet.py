"""Bottleneck ResNet (v1.5, torchvision layout) in Flax linen.

The network matches ``torchvision.models.resnet50`` in structure, padding,
initialisation and parameter names, so that a torchvision ``state_dict`` maps
onto the Flax variables one tensor per leaf. The classifier (``avgpool`` +
``fc``) is left out: the model returns the four stage feature maps and heads
live in ``reidjax.models``.

ReID convention: ``last_stride=1`` keeps ``layer4`` at the resolution of
``layer3`` (16x8 for a 256x128 input instead of 8x4); ``last_stride=2`` is the
ImageNet network.

Name mapping (Flax path -> torchvision key; ``{i}`` = 1..4, ``{j}`` = block)::

  params/conv1/kernel                      conv1.weight
  params/bn1/{scale,bias}                  bn1.{weight,bias}
  batch_stats/bn1/{mean,var}               bn1.{running_mean,running_var}
  params/layer{i}_{j}/conv{k}/kernel       layer{i}.{j}.conv{k}.weight
  params/layer{i}_{j}/bn{k}/{scale,bias}   layer{i}.{j}.bn{k}.{weight,bias}
  batch_stats/layer{i}_{j}/bn{k}/{mean,var}
                                           layer{i}.{j}.bn{k}.running_{mean,var}
  params/layer{i}_{j}/downsample_conv/kernel
                                           layer{i}.{j}.downsample.0.weight
  params/layer{i}_{j}/downsample_bn/...    layer{i}.{j}.downsample.1.{...}

Conv kernels are HWIO here and OIHW in torch (transpose ``(2, 3, 1, 0)``).
``num_batches_tracked`` has no counterpart (Flax BN uses a fixed momentum).

Known training-time difference: torch updates ``running_var`` with the
unbiased batch variance (n / (n - 1)), Flax with the biased one. Over the
N*H*W elements of a ReID batch this is far below 1e-3 relative and does not
affect imported weights or eval-mode outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), i.e. an
# untruncated normal with std sqrt(2 / (out_channels * kh * kw)).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# Flax padding="SAME" pads (total // 2, total - total // 2): for a stride-2
# conv/pool on an even-sized input that is (0, 1) or (2, 3), i.e. asymmetric,
# which shifts every output pixel relative to torchvision's symmetric padding
# and silently breaks imported weights. All paddings are therefore explicit.
_PAD1 = ((1, 1), (1, 1))
_PAD3 = ((3, 3), (3, 3))


class Bottleneck(nn.Module):
  """torchvision ``Bottleneck`` (v1.5: the stride sits on the 3x3 conv).

  Attributes:
    features: bottleneck width; the block outputs ``4 * features`` channels.
    strides: spatial stride of ``conv2`` and of the projection shortcut.
    dtype: computation dtype.
    bn_momentum: Flax BN momentum (``1 - torch_momentum``).
    bn_epsilon: BN epsilon.
  """

  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    """Applies the block.

    Args:
      x: (N, H, W, C) activations.
      train: use batch statistics and update ``batch_stats`` if True.

    Returns:
      (N, ceil(H / strides), ceil(W / strides), 4 * features) activations.
    """
    conv = functools.partial(
        nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=conv_kernel_init)
    # gamma=1 in every BN, also bn3: torchvision's zero_init_residual=False.
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train,
        momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype,
        param_dtype=jnp.float32)
    out_features = self.features * self.expansion

    residual = x
    y = conv(self.features, (1, 1), padding="VALID", name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = conv(self.features, (3, 3), strides=self.strides, padding=_PAD1,
             name="conv2")(y)
    y = nn.relu(norm(name="bn2")(y))
    y = conv(out_features, (1, 1), padding="VALID", name="conv3")(y)
    y = norm(name="bn3")(y)

    # Same condition as torchvision's _make_layer (true only for block 0).
    if self.strides != 1 or x.shape[-1] != out_features:
      residual = conv(out_features, (1, 1), strides=self.strides,
                      padding="VALID", name="downsample_conv")(x)
      residual = norm(name="downsample_bn")(residual)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """Bottleneck ResNet backbone returning the four stage feature maps.

  With the defaults this is torchvision's ResNet-50 without ``fc`` and with
  ``layer4`` at stride 1. Parameters are always float32; ``dtype`` only sets
  the computation (and output) dtype. BN statistics are reduced over the
  whole (global) batch under ``jit`` with a sharded batch, so no
  ``axis_name`` is needed.

  Attributes:
    stage_sizes: number of bottleneck blocks in ``layer1..layer4``.
    width: stem width; stage ``i`` (0-based) has bottleneck width
      ``width * 2**i`` and ``4 * width * 2**i`` output channels.
    last_stride: stride of ``layer4``: 1 (ReID) or 2 (ImageNet).
    dtype: computation dtype, e.g. ``jnp.bfloat16``.
    bn_momentum: Flax BN momentum (``1 - torch_momentum``; torch 0.1 -> 0.9).
    bn_epsilon: BN epsilon.
  """

  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  last_stride: int = 1
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, train: bool) -> dict[str, Any]:
    """Runs the backbone.

    ``train=True`` normalises with batch statistics and needs
    ``mutable=["batch_stats"]``; ``train=False`` uses the running averages.

    Args:
      x: (N, H, W, 3) float images (already normalised).
      train: training mode for BatchNorm.

    Returns:
      Dict with ``"stage1"``..``"stage4"``: (N, h_i, w_i, 4 * width * 2**i)
      maps in ``dtype``, with h_1 = H / 4, h_2 = H / 8, h_3 = H / 16 and
      h_4 = H / (16 * last_stride) (ceil-rounded per stride-2 step). For
      256x128 and ``last_stride=1``: 64x32x256, 32x16x512, 16x8x1024,
      16x8x2048.
    """
    if x.ndim != 4:
      raise ValueError(f"ResNet expects NHWC images, got shape {x.shape}.")
    if len(self.stage_sizes) != 4:
      raise ValueError(
          f"ResNet needs 4 stage sizes, got {tuple(self.stage_sizes)}.")
    if self.last_stride not in (1, 2):
      raise ValueError(f"last_stride must be 1 or 2, got {self.last_stride}.")

    x = jnp.asarray(x, self.dtype)
    x = nn.Conv(self.width, (7, 7), strides=2, padding=_PAD3, use_bias=False,
                dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=conv_kernel_init, name="conv1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, dtype=self.dtype,
                     param_dtype=jnp.float32, name="bn1")(x)
    x = nn.relu(x)
    # nn.max_pool pads with -inf (reduce_window init), like torch's MaxPool2d.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_PAD1)
    # Debug hook (no cost unless "intermediates" is mutable): the stem output.
    self.sow("intermediates", "stem", x)

    features = {}
    for i, num_blocks in enumerate(self.stage_sizes):
      stage_stride = 1 if i == 0 else (self.last_stride if i == 3 else 2)
      for j in range(num_blocks):
        x = Bottleneck(
            features=self.width * 2**i,
            strides=stage_stride if j == 0 else 1,
            dtype=self.dtype,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            name=f"layer{i + 1}_{j}")(x, train)
      features[f"stage{i + 1}"] = x
    return features


def resnet50(**kwargs) -> ResNet:
  """torchvision ResNet-50 backbone (23,508,032 parameters without ``fc``).

  Args:
    **kwargs: other ``ResNet`` fields (``last_stride``, ``dtype``, ...).

  Returns:
    A ``ResNet`` with ``stage_sizes=(3, 4, 6, 3)`` and ``width=64``.
  """
  return ResNet(stage_sizes=(3, 4, 6, 3), width=64, **kwargs)
