"""Bottleneck ResNet (v1.5, torchvision layout) in Flax linen, callable by stage.

With its defaults the network matches ``torchvision.models.resnet50`` in
structure, padding, initialisation and parameter names (He et al., "Deep
Residual Learning for Image Recognition", CVPR 2016, Table 1; v1.5: the stride
sits on the 3x3 conv), so that a torchvision ``state_dict`` maps onto the Flax
variables one tensor per leaf. The classifier (``avgpool`` + ``fc``) is left
out: ``ResNet.__call__`` returns the four stage feature maps and heads live in
``reidjax.models``.

Staged use. The stem and the stages are separate methods, so that a parent
module can put its own modules between them (DCANet between stages,
CACE-Net inside a stage)::

  class Parent(nn.Module):
    def setup(self):
      self.backbone = ResNet()
      self.inserted = SomeModule()
    def __call__(self, images, train):
      x = self.backbone.stem(images, train)
      x = self.backbone.stage(1, x, train)
      x = self.backbone.stage(2, x, train)
      x = self.backbone.stage(3, x, train, blocks=slice(0, -1))
      x = self.inserted(x)  # after the second-to-last block of stage 3
      x = self.backbone.stage(3, x, train, blocks=slice(-1, None))
      return self.backbone.stage(4, x, train)

The backbone's variables stay under ``backbone`` with exactly the names
below, and ``inserted`` lives beside it, so torchvision weights load into
``backbone`` unchanged. ``__call__`` is the same composition without
insertions.

ReID convention: ``last_stride=1`` keeps ``layer4`` at the resolution of
``layer3`` (16x8 for a 256x128 input instead of 8x4); ``last_stride=2`` is the
ImageNet network.

Beyond ResNet-50 the family is configurable (stem kernel, stem pool stride,
per-stage block counts, bottleneck widths, expansion and strides, with
strides given per axis as ``(h, w)`` where needed); ``attdriven_branch``
builds the slim branches of Attention-Driven ReID's Table 1 with it.

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

# A stride: one int for both axes, or (height, width).
Stride = int | tuple[int, int]


def stride_pair(strides: Stride, what: str = "stride") -> tuple[int, int]:
  """``2`` -> ``(2, 2)``; ``(1, 2)`` -> ``(1, 2)``; anything else is refused.

  Args:
    strides: an int or an (h, w) pair, each 1 (keep) or 2 (halve).
    what: the field name, for the error message.

  Returns:
    The (h, w) pair of ints.
  """
  pair = (strides, strides) if isinstance(strides, int) else tuple(strides)
  if len(pair) != 2 or any(s not in (1, 2) for s in pair):
    raise ValueError(
        f"{what} must be 1, 2 or an (h, w) pair of them, got {strides!r}.")
  return tuple(int(s) for s in pair)


class Bottleneck(nn.Module):
  """torchvision ``Bottleneck`` (v1.5: the stride sits on the 3x3 conv).

  conv1x1(features) -> BN -> ReLU -> conv3x3(features, strides) -> BN ->
  ReLU -> conv1x1(expansion * features) -> BN, plus the shortcut (a strided
  1x1 conv + BN when the shape changes, else the identity), then ReLU.

  Attributes:
    features: bottleneck width; the block outputs ``expansion * features``
      channels.
    strides: spatial stride of ``conv2`` and of the projection shortcut: an
      int or an (h, w) pair.
    dtype: computation dtype.
    bn_momentum: Flax BN momentum (``1 - torch_momentum``).
    bn_epsilon: BN epsilon.
    expansion: output channels per bottleneck channel (4 in ResNet-50).
  """

  features: int
  strides: Stride = 1
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  expansion: int = 4

  @nn.compact
  def __call__(self, x, train: bool):
    """Applies the block.

    Args:
      x: (N, H, W, C) activations.
      train: use batch statistics and update ``batch_stats`` if True.

    Returns:
      (N, ceil(H / s_h), ceil(W / s_w), expansion * features) activations,
      (s_h, s_w) = ``strides``.
    """
    strides = stride_pair(self.strides, "Bottleneck.strides")
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
    y = conv(self.features, (3, 3), strides=strides, padding=_PAD1,
             name="conv2")(y)
    y = nn.relu(norm(name="bn2")(y))
    y = conv(out_features, (1, 1), padding="VALID", name="conv3")(y)
    y = norm(name="bn3")(y)

    # Same condition as torchvision's _make_layer (true only for block 0).
    if strides != (1, 1) or x.shape[-1] != out_features:
      residual = conv(out_features, (1, 1), strides=strides,
                      padding="VALID", name="downsample_conv")(x)
      residual = norm(name="downsample_bn")(residual)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """Bottleneck ResNet backbone: a stem and four stages, callable one by one.

  With the defaults this is torchvision's ResNet-50 without ``fc`` and with
  ``layer4`` at stride 1. Parameters are always float32; ``dtype`` only sets
  the computation (and output) dtype. BN statistics are reduced over the
  whole (global) batch under ``jit`` with a sharded batch, so no
  ``axis_name`` is needed.

  Every method that uses BatchNorm takes ``train``: ``train=True`` normalises
  with batch statistics and needs ``mutable=["batch_stats"]``;
  ``train=False`` uses the running averages. Submodules are created in
  ``setup``, so a parent may call ``stem``/``stage`` directly (in its own
  ``setup`` or ``@nn.compact`` code); a submodule that is never called (e.g.
  ``conv1`` of a branch whose stem conv is shared) has no variables.

  Attributes:
    stage_sizes: number of bottleneck blocks in ``layer1..layer4``.
    width: stem width (output channels of ``conv1``); also sets the default
      bottleneck widths ``width * 2**i`` of stage ``i`` (0-based).
    last_stride: stride of ``layer4``: 1 (ReID, "remove the last
      down-sampling") or 2 (ImageNet); an int or an (h, w) pair.
    stage_widths: bottleneck widths of the four stages; None means
      ``(width, 2 * width, 4 * width, 8 * width)``.
    expansion: stage ``i`` outputs ``expansion * stage_widths[i]`` channels
      (4 in ResNet-50).
    stage_strides: strides of ``layer1..layer3`` (their first block); stage 4
      uses ``last_stride``. Each an int or an (h, w) pair, entries 1 or 2.
    stem_kernel_size: odd kernel of the stride-2 stem conv, padded by
      ``stem_kernel_size // 2`` (7 in torchvision, 3 in the slim branches).
    stem_pool_strides: stride of the stem's 3x3 max pool (padding 1); an int
      or an (h, w) pair.
    dtype: computation dtype, e.g. ``jnp.bfloat16``.
    bn_momentum: Flax BN momentum (``1 - torch_momentum``; torch 0.1 -> 0.9).
    bn_epsilon: BN epsilon.
  """

  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  last_stride: Stride = 1
  stage_widths: Sequence[int] | None = None
  expansion: int = 4
  stage_strides: Sequence[Stride] = (1, 2, 2)
  stem_kernel_size: int = 7
  stem_pool_strides: Stride = 2
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @property
  def bottleneck_widths(self) -> tuple[int, ...]:
    """Bottleneck widths of stages 1..4."""
    if self.stage_widths is None:
      return tuple(self.width * 2**i for i in range(4))
    return tuple(self.stage_widths)

  @property
  def stage_features(self) -> tuple[int, ...]:
    """Output channels of stages 1..4 (``expansion * bottleneck_widths``)."""
    return tuple(self.expansion * w for w in self.bottleneck_widths)

  @property
  def strides_per_stage(self) -> tuple[tuple[int, int], ...]:
    """(h, w) strides of stages 1..4."""
    return tuple(
        stride_pair(s, f"stage_strides[{i}]")
        for i, s in enumerate(self.stage_strides)) + (
            stride_pair(self.last_stride, "last_stride"),)

  def _check_fields(self):
    if len(self.stage_sizes) != 4:
      raise ValueError(
          f"ResNet needs 4 stage sizes, got {tuple(self.stage_sizes)}.")
    if any(int(n) < 1 for n in self.stage_sizes):
      raise ValueError(
          f"ResNet stage_sizes must be >= 1, got {tuple(self.stage_sizes)}.")
    if self.stage_widths is not None and len(self.stage_widths) != 4:
      raise ValueError(
          f"ResNet stage_widths needs 4 widths (or None for width * 2**i), "
          f"got {tuple(self.stage_widths)}.")
    if len(self.stage_strides) != 3:
      raise ValueError(
          f"ResNet stage_strides gives the strides of stages 1-3 (stage 4's "
          f"is last_stride), got {tuple(self.stage_strides)}.")
    if self.expansion < 1:
      raise ValueError(f"expansion must be >= 1, got {self.expansion}.")
    if self.stem_kernel_size < 1 or self.stem_kernel_size % 2 != 1:
      raise ValueError(
          f"stem_kernel_size must be odd (symmetric padding), got "
          f"{self.stem_kernel_size}.")
    stride_pair(self.stem_pool_strides, "stem_pool_strides")

  def setup(self):
    self._check_fields()
    pad = self.stem_kernel_size // 2
    self.conv1 = nn.Conv(
        self.width, (self.stem_kernel_size,) * 2, strides=2,
        padding=((pad, pad), (pad, pad)), use_bias=False, dtype=self.dtype,
        param_dtype=jnp.float32, kernel_init=conv_kernel_init)
    # use_running_average is given per call (it depends on ``train``).
    self.bn1 = nn.BatchNorm(momentum=self.bn_momentum,
                            epsilon=self.bn_epsilon, dtype=self.dtype,
                            param_dtype=jnp.float32)
    for i, (num_blocks, features, strides) in enumerate(zip(
        self.stage_sizes, self.bottleneck_widths, self.strides_per_stage)):
      for j in range(num_blocks):
        # setattr names the block "layer{i}_{j}" (torchvision's layer{i}.{j}).
        setattr(self, f"layer{i + 1}_{j}", Bottleneck(
            features=features, strides=strides if j == 0 else 1,
            expansion=self.expansion, dtype=self.dtype,
            bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon))

  def stem_conv(self, x, train: bool):
    """``conv1`` (stride 2) -> ``bn1`` -> ReLU.

    Args:
      x: (N, H, W, 3) float images (already normalised).
      train: training mode for BatchNorm.

    Returns:
      (N, ceil(H / 2), ceil(W / 2), width) in ``dtype``.
    """
    if x.ndim != 4:
      raise ValueError(f"ResNet expects NHWC images, got shape {x.shape}.")
    x = jnp.asarray(x, self.dtype)
    x = self.bn1(self.conv1(x), use_running_average=not train)
    return nn.relu(x)

  def stem_pool(self, x):
    """The stem's 3x3 max pool (padding 1, stride ``stem_pool_strides``).

    Args:
      x: (N, H, W, C) output of ``stem_conv``.

    Returns:
      (N, ceil(H / s_h), ceil(W / s_w), C), (s_h, s_w) = stem_pool_strides.
    """
    strides = stride_pair(self.stem_pool_strides, "stem_pool_strides")
    # nn.max_pool pads with -inf (reduce_window init), like torch's MaxPool2d.
    return nn.max_pool(x, (3, 3), strides=strides, padding=_PAD1)

  def stem(self, x, train: bool):
    """``stem_pool(stem_conv(x))``: images -> the input of stage 1.

    Also sows the result as ``intermediates/stem`` (a debug hook; free
    unless ``"intermediates"`` is mutable).

    Args:
      x: (N, H, W, 3) float images (already normalised).
      train: training mode for BatchNorm.

    Returns:
      (N, H / 4, W / 4, width) for the torchvision stem (ceil-rounded per
      stride-2 step; the pool divides by ``stem_pool_strides``).
    """
    x = self.stem_pool(self.stem_conv(x, train))
    self.sow("intermediates", "stem", x)
    return x

  def stage(self, index: int, x, train: bool,
            blocks: int | slice = slice(None)):
    """Runs stage ``index`` (``layer{index}``), or only some of its blocks.

    Running ``blocks=slice(0, -1)`` and then ``blocks=slice(-1, None)`` is
    the whole stage; a parent can put its own module in between. An empty
    selection (e.g. ``slice(0, -1)`` of a one-block stage) returns ``x``.

    Args:
      index: 1..4.
      x: (N, H, W, C): the stem output for stage 1, else the previous stage's
        output (or, after a partial call, the output of the blocks so far).
      train: training mode for BatchNorm.
      blocks: which blocks, in order: a slice of ``range(stage_sizes[index
        - 1])`` with step 1, or one block index (negative counts from the
        end).

    Returns:
      (N, ceil(H / s_h), ceil(W / s_w), stage_features[index - 1]) when the
      selection contains block 0 ((s_h, s_w) = the stage's stride), else
      (N, H, W, stage_features[index - 1]).
    """
    if index not in (1, 2, 3, 4):
      raise ValueError(f"ResNet stage index must be 1..4, got {index!r}.")
    num_blocks = self.stage_sizes[index - 1]
    if isinstance(blocks, int):
      if not -num_blocks <= blocks < num_blocks:
        raise ValueError(
            f"Block {blocks} does not exist in stage {index}, which has "
            f"{num_blocks} block(s).")
      blocks = slice(blocks % num_blocks, blocks % num_blocks + 1)
    if not isinstance(blocks, slice) or blocks.step not in (None, 1):
      raise ValueError(
          f"blocks must be an int or a slice with step 1, got {blocks!r}.")
    for j in range(num_blocks)[blocks]:
      x = getattr(self, f"layer{index}_{j}")(x, train)
    return x

  def __call__(self, x, train: bool) -> dict[str, Any]:
    """Runs the backbone: ``stem`` then ``stage(1..4)``.

    Args:
      x: (N, H, W, 3) float images (already normalised).
      train: training mode for BatchNorm.

    Returns:
      Dict with ``"stage1"``..``"stage4"``: (N, h_i, w_i,
      ``stage_features[i - 1]``) maps in ``dtype``. For ResNet-50, h_1 = H /
      4, h_2 = H / 8, h_3 = H / 16 and h_4 = H / (16 * last_stride)
      (ceil-rounded per stride-2 step); for 256x128 and ``last_stride=1``:
      64x32x256, 32x16x512, 16x8x1024, 16x8x2048.
    """
    x = self.stem(x, train)
    features = {}
    for index in range(1, 5):
      x = self.stage(index, x, train)
      features[f"stage{index}"] = x
    return features


def resnet50(**kwargs) -> ResNet:
  """torchvision ResNet-50 backbone (23,508,032 parameters without ``fc``).

  Args:
    **kwargs: ``ResNet`` fields (``last_stride``, ``dtype``, ...); the
      defaults are ResNet-50's.

  Returns:
    A ``ResNet`` with ``stage_sizes=(3, 4, 6, 3)`` and ``width=64`` unless
    overridden.
  """
  return ResNet(**kwargs)


def attdriven_branch(kind: str, **kwargs) -> ResNet:
  """A slim branch of Attention-Driven ReID's base network (Table 1).

  Yang et al., "Attention driven person re-identification", Pattern
  Recognition 2019, Sec. 3.1 and Table 1. Our reading of the table:

  * Conv1 "3x3, 32, S-2x2": a 3x3 stride-2 conv with 32 channels (padding 1),
    followed by BN and ReLU as in every residual network; ``width=32`` for
    both kinds (the table marks it shared between the five branches; a model
    that shares it calls one branch's ``stem_conv`` and every branch's
    ``stem_pool``).
  * Conv2_x's "3x3 MP": a 3x3 max pool, padding 1 as in torchvision, stride
    (2, 2) in the global branch and (1, 2) (height 1, width 2) in the part
    branches. Part crops are 96 x 192 (H x W), so (1, 2) makes their maps
    square: 96x192 -> 48x96 -> 48x48.
  * Conv2_x..Conv5_x: three bottlenecks each (the "Layer #" column counts 9
    convs per stage), widths [1x1, w; 3x3, w; 1x1, 2w]: expansion 2 with
    w = 32, 64, 128, 256 (global; outputs 64..512) or 16, 32, 64, 128 (part;
    outputs 32..256).
  * Strides: the table gives none for the stages; as in ResNet the first
    block of Conv3_x and Conv4_x has stride 2, and "we remove the last
    down-sampling operation in each branch" gives Conv5_x stride 1.
  * Shortcuts (not in the table): torchvision's rule, a 1x1 conv + BN
    projection where the shape changes (block 0 of each stage, except in the
    part branch's Conv2_x: 32 -> 32 channels at stride 1), else the
    identity.

  Map sizes: global 384x192 -> stem 96x48x32 -> stages 96x48x64, 48x24x128,
  24x12x256, 24x12x512; part 96x192 -> stem 48x48x32 -> 48x48x32, 24x24x64,
  12x12x128, 12x12x256. Parameters (conv kernels + BN scale/bias):
  3,495,968 global, 877,728 part; five branches with Conv1 shared (its
  864 + 64 counted once) give 7,003,168, about 3% more than the 6.8 M of the
  paper's Table 12 (which does not say what it counts; it lists ResNet-50
  without its classifier, 23.5 M). Neither dropping the BN parameters
  (6.96 M) nor the projection shortcuts (6.66 M) matches it exactly, so the
  reading above is kept.

  Args:
    kind: ``"global"`` (whole-body branch) or ``"part"`` (body-part branch).
    **kwargs: other ``ResNet`` fields (``dtype``, ...) or overrides.

  Returns:
    The branch as a ``ResNet``.
  """
  pool_strides = {"global": (2, 2), "part": (1, 2)}
  if kind not in pool_strides:
    raise ValueError(
        f"Attention-Driven branch kind must be 'global' or 'part', got "
        f"{kind!r}.")
  widths = (32, 64, 128, 256) if kind == "global" else (16, 32, 64, 128)
  fields = dict(stage_sizes=(3, 3, 3, 3), width=32, stage_widths=widths,
                expansion=2, stage_strides=(1, 2, 2), last_stride=1,
                stem_kernel_size=3, stem_pool_strides=pool_strides[kind])
  return ResNet(**{**fields, **kwargs})
