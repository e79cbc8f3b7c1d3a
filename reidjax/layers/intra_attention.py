r"""Intra-attention of Attention-Driven ReID: an attention path beside a block.

Yang, Yan, Lu et al., "Attention driven person re-identification", Pattern
Recognition 2019, Sec. 3.3, Fig. 5 and Eq. 3-7. Equation -> code -> test
map: ``docs/papers/attdriven.md``.

A block B_i of a branch (in the model: one residual stage, B2-B4 = Table 1's
Conv3_x..Conv5_x) has two paths. The feature path gives a_i = F(v_i)
(Eq. 3, (N, h, w, c)); the attention path gives a mask m_i = M(v_i) of the
same shape (Eq. 4), and the block outputs v_{i+1} = (1 + m_i) * a_i (Eq. 7,
the residual form of Eq. 5). ``IntraAttention(attention_input, features)``
is the attention path and Eq. 7:

* ``attention_input`` x (N, h, w, c_x): v_i brought to a_i's resolution. In
  the model it is the output of the stage's first residual unit (which does
  the stage's stride and channel change), shared by both paths the way
  Wang et al.'s Residual Attention Network (the paper's [28], whose scheme
  Eq. 7 follows) shares its pre-processing unit; the feature path is the
  stage's remaining units. The paper does not say how v_i (at the previous
  block's resolution) reaches a_i's; this is our reading.
* Encoder-decoder (``AttentionEncoderDecoder``, "residual unit and max
  pooling ... down to lower resolutions ... symmetrical up-sampling ...
  skip layers ... element wise addition"): level 0 is x; level p (p = 1..P)
  is a residual unit (a ``Bottleneck`` of the branch's kind, width
  c / expansion, c output channels) on a 3x3 stride-2 max pool (padding 1)
  of level p - 1. The decoder starts at level P and, for p = P..1,
  upsamples bilinearly to level p - 1's size and adds level p - 1. The
  result is A (N, h, w, c), the "initial attention confidence score". P =
  ``num_pools``: 2 in B2, 1 in B3 and B4 ("we apply max pooling two times
  in Block 2, and one time in Blocks 3-4").
* Mask (``AttentionMask``, Eq. 6 and the text after it), for
  ``decomposition="both"`` (the paper): spatial attention S = f(A, W^s), a
  3x3 conv c -> 1 (N, h, w, 1) (Eq. 6; the kernel size is ours); channel
  attention C = a 1x1 conv (a c x c FC) of the average-pooled A, V (N, 1,
  1, c); m = sigmoid(conv1x1(S * C)) (N, h, w, c), the 1x1 conv c -> c.
  Ablations (Table 8 "without attention decomposition", and one-factor
  variants): ``"none"``: m = sigmoid(conv1x1(A)); ``"spatial"``: m =
  sigmoid(S) (N, h, w, 1), broadcast over channels; ``"channel"``: m =
  sigmoid(C) (N, 1, 1, c), broadcast over positions.
* Output (Eq. 7): (1 + m) * features.

Readings where the paper is silent: the residual units of the attention
path are the branch's own bottleneck (expansion 2 in Table 1), with
BatchNorm; convs of S, C and the final 1x1 have biases and Flax's default
initialisation, except the final 1x1 conv's kernel, zero (so m = 1/2 at
the start: S * C is large at initialisation and would saturate the
sigmoid); the sigmoid runs in float32 whatever ``dtype``. With the
paper's widths the attention paths of the five branches add 3,761,039
parameters to the base network (Table 12: 10.4 M - 6.8 M = 3.6 M).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reidjax.backbones.resnet import Bottleneck

DECOMPOSITIONS = ("both", "spatial", "channel", "none")
# Eq. 6's convolution f: its kernel (the paper gives none).
SPATIAL_KERNEL_SIZE = 3
_POOL_PADDING = ((1, 1), (1, 1))


def check_decomposition(decomposition: str) -> str:
  if decomposition not in DECOMPOSITIONS:
    raise ValueError(f"intra-attention decomposition must be one of {DECOMPOSITIONS}, "
                     f"got {decomposition!r}.")
  return decomposition


def encoder_decoder_sizes(height: int, width: int, num_pools: int) -> list[tuple[int, int]]:
  """(h, w) of levels 0..P: each 3x3 stride-2 max pool (padding 1) gives ceil(h / 2)."""
  sizes = [(height, width)]
  for _ in range(num_pools):
    h, w = sizes[-1]
    sizes.append((-(-h // 2), -(-w // 2)))
  return sizes


class AttentionEncoderDecoder(nn.Module):
  """x (N, h, w, c) -> A (N, h, w, c): the attention path's encoder-decoder.

  Attributes:
    num_pools: P, the max-pool steps (2 in B2, 1 in B3 and B4).
    expansion: the residual units' output channels per bottleneck channel.
    dtype, bn_momentum, bn_epsilon: as ``Bottleneck``'s.
  """

  num_pools: int
  expansion: int
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.num_pools < 1:
      raise ValueError(f"the attention path needs num_pools >= 1, got {self.num_pools}.")
    channels = x.shape[-1]
    if channels % self.expansion:
      raise ValueError(f"attention path: {channels} channels are not divisible by the "
                       f"residual units' expansion {self.expansion}.")
    levels = [x]
    for p in range(1, self.num_pools + 1):
      pooled = nn.max_pool(levels[-1], (3, 3), strides=(2, 2), padding=_POOL_PADDING)
      levels.append(Bottleneck(
          features=channels // self.expansion, expansion=self.expansion, dtype=self.dtype,
          bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
          name=f"encoder{p}")(pooled, train))
    y = levels[-1]
    for p in range(self.num_pools, 0, -1):
      skip = levels[p - 1]
      y = jax.image.resize(y, y.shape[:1] + skip.shape[1:3] + y.shape[3:], "bilinear")
      y = y.astype(skip.dtype) + skip
    return y


class AttentionMask(nn.Module):
  """A (N, h, w, c) -> the mask m and its factors (Eq. 6 and Fig. 5).

  Attributes:
    decomposition: ``"both"`` (S x C, the paper), ``"spatial"``,
      ``"channel"`` or ``"none"`` (module doc).
    dtype: computation dtype of the convs.
  """

  decomposition: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, attention: jax.Array) -> dict[str, jax.Array]:
    """Returns ``mask`` m in [0, 1] ((N, h, w, c), (N, h, w, 1) or (N, 1, 1, c)),
    ``spatial`` S (N, h, w) and/or ``channel`` C (N, c) when they exist (float32)."""
    check_decomposition(self.decomposition)
    channels = attention.shape[-1]
    conv = functools.partial(nn.Conv, dtype=self.dtype, param_dtype=jnp.float32)
    out: dict[str, jax.Array] = {}
    k = SPATIAL_KERNEL_SIZE
    if self.decomposition in ("both", "spatial"):
      spatial = conv(1, (k, k), padding=((k // 2, k // 2),) * 2, name="spatial")(attention)
      out["spatial"] = spatial[..., 0].astype(jnp.float32)
    if self.decomposition in ("both", "channel"):
      pooled = jnp.mean(attention.astype(jnp.float32), axis=(1, 2), keepdims=True)
      channel = conv(channels, (1, 1), name="channel")(pooled.astype(attention.dtype))
      out["channel"] = channel[:, 0, 0].astype(jnp.float32)
    # Zero-initialised: every mask starts at sigmoid(0) = 1/2 (products S * C are
    # large at init and would saturate the sigmoid, leaving no gradient).
    fuse = conv(channels, (1, 1), kernel_init=nn.initializers.zeros, name="fuse")
    if self.decomposition == "both":
      logits = fuse(spatial * channel)
    elif self.decomposition == "none":
      logits = fuse(attention)
    else:
      logits = spatial if self.decomposition == "spatial" else channel
    out["mask"] = jax.nn.sigmoid(logits.astype(jnp.float32))
    return out


class IntraAttention(nn.Module):
  """The attention path of a block and Eq. 7: (1 + M(x)) * features.

  Attributes:
    num_pools: P of the encoder-decoder (2 in B2, 1 in B3 and B4).
    decomposition: ``"both"`` | ``"spatial"`` | ``"channel"`` | ``"none"``.
    expansion: the branch's bottleneck expansion (2 in Table 1).
    dtype, bn_momentum, bn_epsilon: as the branch's ``ResNet``.
  """

  num_pools: int
  decomposition: str
  expansion: int
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, attention_input: jax.Array, features: jax.Array, train: bool
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Applies the attention path.

    Args:
      attention_input: (N, h, w, c) the path's input (module doc).
      features: (N, h, w, c) a_i, the feature path's output.
      train: BatchNorm mode of the residual units.

    Returns:
      ((N, h, w, c) (1 + m) * a_i in ``dtype``, aux): aux holds ``mask`` m
      (float32, see ``AttentionMask``), ``mask_map`` (N, h, w) its mean over
      channels (what a figure shows), and ``spatial`` S / ``channel`` C
      where the decomposition has them.
    """
    if attention_input.ndim != 4 or attention_input.shape != features.shape:
      raise ValueError(
          f"IntraAttention needs the attention input and the features a_i with the same "
          f"(N, h, w, c) shape, got {attention_input.shape} and {features.shape}.")
    attention = AttentionEncoderDecoder(
        num_pools=self.num_pools, expansion=self.expansion, dtype=self.dtype,
        bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
        name="encoder_decoder")(attention_input, train)
    aux = AttentionMask(self.decomposition, dtype=self.dtype, name="mask")(attention)
    mask = aux["mask"]
    aux["mask_map"] = jnp.broadcast_to(mask, features.shape[:3] + mask.shape[3:]).mean(-1)
    output = (1.0 + mask) * features.astype(jnp.float32)
    return output.astype(features.dtype), aux
