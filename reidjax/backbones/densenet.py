"""DenseNet-BC (Huang et al., CVPR 2017; torchvision layout) in Flax linen.

Implements the DenseNet-121 feature extractor exactly as
``torchvision.models.densenet121`` builds it, so that a torchvision
``state_dict`` maps onto the Flax variables one tensor per leaf:

* stem: ``conv0`` 7x7/2 (pad 3, no bias) -> ``norm0`` -> ReLU -> 3x3/2 max
  pool (pad 1);
* dense block ``i``: ``num_layers`` dense layers, each
  BN-ReLU-conv1x1(``bn_size * growth_rate``)-BN-ReLU-conv3x3(``growth_rate``,
  pad 1), its output concatenated to its input (Eq. 2 of the paper,
  ``x_l = H_l([x_0, ..., x_{l-1}])``);
* transition ``i`` (after blocks 1-3): BN-ReLU-conv1x1 to
  ``compression * channels``, then a 2x2/2 average pool (floor-rounded, no
  padding, like ``nn.AvgPool2d(2, 2)``);
* ``norm5`` after block 4, then the ReLU that torchvision applies in
  ``DenseNet.forward``.

The classifier is left out; heads live in ``reidjax.models``. The stem,
each dense block and each transition are also callable one by one
(``DenseNet.stem``, ``block(i)``, ``transition(i)``), so that a parent module
can insert its own modules between them while the backbone's variables keep
the names below. Dropout inside
dense layers (torchvision's ``drop_rate``, 0 for the ImageNet models) is not
implemented. Memory-efficient (checkpointed) concatenation is not needed: XLA
decides what to keep for the backward pass.

Name mapping (Flax path -> torchvision key; ``{i}`` = block, ``{l}`` = layer,
both 1-based as in torchvision; ``{k}`` = 1, 2; ``F.`` = ``features.``,
``D`` = ``denseblock{i}/denselayer{l}``)::

  params/conv0/kernel               F.conv0.weight
  params/norm0/{scale,bias}         F.norm0.{weight,bias}
  batch_stats/norm0/{mean,var}      F.norm0.running_{mean,var}
  params/D/norm{k}/{scale,bias}     F.denseblock{i}.denselayer{l}.norm{k}.*
  params/D/conv{k}/kernel           F.denseblock{i}.denselayer{l}.conv{k}.weight
  params/transition{i}/norm/...     F.transition{i}.norm.{weight,bias}
  params/transition{i}/conv/kernel  F.transition{i}.conv.weight
  params/norm5/{scale,bias}         F.norm5.{weight,bias}

(``batch_stats`` mirror every BN as ``{mean,var}`` <-> ``running_{mean,var}``.)
Conv kernels are HWIO here and OIHW in torch. Old torchvision checkpoints
(including the official ImageNet DenseNet files) spell ``norm1`` as
``norm.1``; ``reidjax.backbones.torchvision_import`` normalises that.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# torchvision's DenseNet initialises convs with kaiming_normal_ at its
# defaults (mode="fan_in", gain sqrt(2)): an untruncated normal with std
# sqrt(2 / (in_channels * kh * kw)). (ResNet uses fan_out instead.)
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

# Explicit symmetric padding: Flax "SAME" pads (0, 1) for stride-2 windows on
# even sizes where torchvision pads (1, 1) (see resnet.py).
_PAD1 = ((1, 1), (1, 1))
_PAD3 = ((3, 3), (3, 3))

# Smallest H (or W) for which every stage keeps at least one pixel: the stem
# maps 29 -> 15 -> 8 and the three transitions 8 -> 4 -> 2 -> 1.
MIN_INPUT_SIZE = 29


def _conv(features, kernel_size, dtype, **kwargs):
  return nn.Conv(features, kernel_size, use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=conv_kernel_init,
                 **kwargs)


class DenseLayer(nn.Module):
  """torchvision ``_DenseLayer`` plus the concatenation done by its block.

  Attributes:
    growth_rate: channels the layer adds (``k`` in the paper).
    bn_size: bottleneck width factor: ``conv1`` has ``bn_size * growth_rate``
      output channels.
    dtype: computation dtype.
    bn_momentum: Flax BN momentum (``1 - torch_momentum``).
    bn_epsilon: BN epsilon.
  """

  growth_rate: int
  bn_size: int = 4
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, train: bool):
    """Applies the layer.

    Args:
      x: (N, H, W, C) concatenation of all earlier features of the block.
      train: use batch statistics and update ``batch_stats`` if True.

    Returns:
      (N, H, W, C + growth_rate): ``x`` followed by the new features.
    """
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train,
        momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype,
        param_dtype=jnp.float32)
    y = nn.relu(norm(name="norm1")(x))
    y = _conv(self.bn_size * self.growth_rate, (1, 1), self.dtype,
              padding="VALID", name="conv1")(y)
    y = nn.relu(norm(name="norm2")(y))
    y = _conv(self.growth_rate, (3, 3), self.dtype, padding=_PAD1,
              name="conv2")(y)
    return jnp.concatenate([x, y], axis=-1)


class DenseBlock(nn.Module):
  """torchvision ``_DenseBlock``: ``num_layers`` densely connected layers.

  Attributes:
    num_layers: number of dense layers (named ``denselayer1..``).
    growth_rate, bn_size, dtype, bn_momentum, bn_epsilon: as ``DenseLayer``.
  """

  num_layers: int
  growth_rate: int
  bn_size: int = 4
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, train: bool):
    """(N, H, W, C) -> (N, H, W, C + num_layers * growth_rate)."""
    for l in range(self.num_layers):
      x = DenseLayer(growth_rate=self.growth_rate, bn_size=self.bn_size,
                     dtype=self.dtype, bn_momentum=self.bn_momentum,
                     bn_epsilon=self.bn_epsilon,
                     name=f"denselayer{l + 1}")(x, train)
    return x


class Transition(nn.Module):
  """torchvision ``_Transition``: BN-ReLU-conv1x1, then 2x2/2 average pool.

  Attributes:
    features: output channels (``floor(compression * C)``).
    dtype, bn_momentum, bn_epsilon: as ``DenseLayer``.
  """

  features: int
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, train: bool):
    """(N, H, W, C) -> (N, floor(H / 2), floor(W / 2), features)."""
    y = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, dtype=self.dtype,
                     param_dtype=jnp.float32, name="norm")(x)
    y = _conv(self.features, (1, 1), self.dtype, padding="VALID",
              name="conv")(nn.relu(y))
    # "VALID" drops a trailing odd row/column, as AvgPool2d(2, 2) does.
    return nn.avg_pool(y, (2, 2), strides=(2, 2), padding="VALID")


class DenseNet(nn.Module):
  """DenseNet-BC backbone returning the four dense-block feature maps.

  With the defaults this is torchvision's DenseNet-121 without the
  classifier (6,953,856 parameters). Parameters are always float32; ``dtype``
  only sets the computation dtype (bf16 on GPU).

  The stem, each dense block and each transition are separate methods
  (``stem``, ``block``, ``transition``), so a parent can run them one by one
  and insert its own modules; ``__call__`` is their plain composition.
  Submodules are created in ``setup``, so a parent may call these methods
  from its own ``setup`` or ``@nn.compact`` code; every method that uses
  BatchNorm takes ``train`` (True: batch statistics, needs
  ``mutable=["batch_stats"]``; False: running averages).

  Attributes:
    growth_rate: channels added per dense layer (32).
    block_config: dense layers per block ((6, 12, 24, 16) for DenseNet-121).
    num_init_features: stem width (64).
    bn_size: bottleneck factor of the dense layers (4).
    compression: transition channel factor (0.5, "DenseNet-BC").
    dtype: computation dtype, e.g. ``jnp.bfloat16``.
    bn_momentum: Flax BN momentum (``1 - torch_momentum``; torch 0.1 -> 0.9).
    bn_epsilon: BN epsilon.
  """

  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int = 4
  compression: float = 0.5
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @property
  def block_features(self) -> tuple[int, ...]:
    """Output channels of dense blocks 1..4 (before their transition)."""
    out, channels = [], self.num_init_features
    for i, num_layers in enumerate(self.block_config):
      channels += num_layers * self.growth_rate
      out.append(channels)
      # int() floors, as torchvision's int(num_features * compression).
      channels = int(channels * self.compression)
    return tuple(out)

  def setup(self):
    if len(self.block_config) != 4:
      raise ValueError(
          f"DenseNet needs 4 dense blocks, got {tuple(self.block_config)}.")
    norm = functools.partial(
        nn.BatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
        dtype=self.dtype, param_dtype=jnp.float32)
    shared = dict(dtype=self.dtype, bn_momentum=self.bn_momentum,
                  bn_epsilon=self.bn_epsilon)
    self.conv0 = _conv(self.num_init_features, (7, 7), self.dtype, strides=2,
                       padding=_PAD3)
    self.norm0 = norm()
    for i, (num_layers, channels) in enumerate(zip(self.block_config,
                                                   self.block_features)):
      # setattr names the submodules as torchvision does.
      setattr(self, f"denseblock{i + 1}", DenseBlock(
          num_layers=num_layers, growth_rate=self.growth_rate,
          bn_size=self.bn_size, **shared))
      if i < 3:
        setattr(self, f"transition{i + 1}", Transition(
            features=int(channels * self.compression), **shared))
    self.norm5 = norm()

  def stem(self, x, train: bool):
    """``conv0`` 7x7/2 -> ``norm0`` -> ReLU -> 3x3/2 max pool.

    Args:
      x: (N, H, W, 3) float images (already normalised), H, W >= 29.
      train: training mode for BatchNorm.

    Returns:
      (N, ceil(ceil(H / 2) / 2), ceil(ceil(W / 2) / 2), num_init_features)
      in ``dtype``.
    """
    if x.ndim != 4:
      raise ValueError(f"DenseNet expects NHWC images, got shape {x.shape}.")
    if min(x.shape[1:3]) < MIN_INPUT_SIZE:
      raise ValueError(
          f"DenseNet needs images of at least {MIN_INPUT_SIZE}x"
          f"{MIN_INPUT_SIZE} (three 2x2 transitions after a stride-4 stem), "
          f"got {x.shape[1]}x{x.shape[2]}.")
    x = jnp.asarray(x, self.dtype)
    x = nn.relu(self.norm0(self.conv0(x), use_running_average=not train))
    # nn.max_pool pads with -inf, like torch's MaxPool2d.
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=_PAD1)

  def block(self, index: int, x, train: bool):
    """Dense block ``index`` (1..4); block 4 is followed by ``norm5``-ReLU.

    Args:
      index: 1..4.
      x: (N, H, W, C): the stem output for block 1, else the output of
        ``transition(index - 1)``.
      train: training mode for BatchNorm.

    Returns:
      (N, H, W, block_features[index - 1]): the ``"block{index}"`` map of
      ``__call__``.
    """
    if index not in (1, 2, 3, 4):
      raise ValueError(f"DenseNet block index must be 1..4, got {index!r}.")
    x = getattr(self, f"denseblock{index}")(x, train)
    if index == 4:
      x = nn.relu(self.norm5(x, use_running_average=not train))
    return x

  def transition(self, index: int, x, train: bool):
    """Transition ``index`` (1..3): BN-ReLU-conv1x1, then 2x2/2 average pool.

    Args:
      index: 1..3.
      x: (N, H, W, block_features[index - 1]), the output of
        ``block(index)``.
      train: training mode for BatchNorm.

    Returns:
      (N, floor(H / 2), floor(W / 2),
      int(compression * block_features[index - 1])).
    """
    if index not in (1, 2, 3):
      raise ValueError(
          f"DenseNet transition index must be 1..3, got {index!r}.")
    return getattr(self, f"transition{index}")(x, train)

  def __call__(self, x, train: bool) -> dict[str, Any]:
    """Runs the backbone: ``stem``, then ``block(i)`` and ``transition(i)``.

    Args:
      x: (N, H, W, 3) float images (already normalised), H, W >= 29.
      train: training mode for BatchNorm.

    Returns:
      Dict (maps in ``dtype``) with, for DenseNet-121 at 256x128:

      * ``"block1"``..``"block3"``: the output of dense block ``i``, i.e. the
        concatenated features before transition ``i`` (and before its
        BN-ReLU): (N, 64, 32, 256), (N, 32, 16, 512), (N, 16, 8, 1024);
      * ``"block4"``: block 4 after ``norm5`` and ReLU, the map torchvision's
        classifier pools: (N, 8, 4, 1024);
      * ``"pooled"``: the global mean of ``block4``, (N, 1024), reduced and
        returned in float32 whatever ``dtype`` is.

      Spatial sizes: the stem conv and max pool each give ``ceil(h / 2)``,
      each transition ``floor(h / 2)``.
    """
    x = self.stem(x, train)
    features = {}
    for index in range(1, 5):
      x = self.block(index, x, train)
      features[f"block{index}"] = x
      if index < 4:
        x = self.transition(index, x, train)
    features["pooled"] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return features


def densenet121(**kwargs) -> DenseNet:
  """torchvision DenseNet-121 features (6,953,856 parameters).

  Args:
    **kwargs: ``DenseNet`` fields (``dtype``, ...); the defaults are
      DenseNet-121's. ``growth_rate``, ``block_config`` or
      ``num_init_features`` shrink the same architecture (CPU quick starts),
      which then no longer loads DenseNet-121 weights.

  Returns:
    A ``DenseNet`` with growth 32, blocks (6, 12, 24, 16), 64 stem features
    unless overridden.
  """
  return DenseNet(**kwargs)
