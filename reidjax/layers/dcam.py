r"""DCAM: the Discriminative Clue Alignment Module of DCANet, and its loss.

Hu, Zhou, Huang, "Discriminative Clue Alignment Network for Both Image- and
Video-Based Person Re-Identification", BMVC 2021, Sec. 3.1 (Eq. 1-4) and
Sec. 3.2 (Eq. 5). Equation -> code -> test map: ``docs/papers/dcanet.md``.

A DCAM takes a backbone stage's map f (B, H, W, C) (the paper's
C x H x W, NHWC here) and returns a map of the same shape, so it can sit
after any stage and feed the next one. K = ``num_blocks``.

Spatial multi-attention (Eq. 1). Block k is conv1x1 (C -> C / spatial_reduction)
-> ReLU -> conv1x1 (-> 1) and a softmax over the H * W positions:
A_sp,k (H, W), sum_{x,y} A_sp,k = 1; f_sp,k = f * A_sp,k (B, K, H, W, C).

Alignment (Eq. 2), ``alignment="stack"`` (the paper read literally): the K
maps f_sp,k stacked along the height axis (K H rows, block k in rows
[k H, (k + 1) H)) and max-pooled with a K x 1 window and stride K x 1, which
gives H rows again. Output row r pools stacked rows [r K, (r + 1) K), all of
one block when K divides H, so output rows [k H / K, (k + 1) H / K) come
from block k only: the clues of block k always occupy the k-th horizontal
band of f_sp (B, H, W, C) (the paper: "the DCs found by the first block are
presented in the first part"). Each band is its block's map max-pooled by K
along the height. H not divisible by K would mix blocks within a window: a
ValueError naming H, K and the stage. ``alignment="max"``: the maximum over
the attention axis, max_k f_sp,k, the reading the paper contrasts itself
with (Li et al. 2018), kept for comparison.

Channel multi-attention (Eq. 3-4). The input is f_sp + f (the paper's
element-wise skip). One conv1x1 C -> C/K gives f_ch (B, H, W, C/K), shared
by the K blocks; block k's two-layer FC_k (C/K -> C/K / channel_reduction
-> ReLU -> C/K) is applied to the global max-pool and to the global
average-pool of f_ch, the two summed, and a softmax over the C/K channels
gives A_ch,k (C/K) (Eq. 3); f_ch,k = A_ch,k * f_ch (Eq. 4). The K maps
concatenated along the channels, block k in channels [k C/K, (k + 1) C/K),
are the output (B, H, W, C).

Switches (Table 3-style ablations, ``attention``): ``"both"`` (the paper);
``"spatial"``: no channel module, the output is f_sp + f (the module's
skip sum, which would have been the channel module's input); ``"channel"``:
no spatial module, the channel module reads f.

Discriminant loss (Eq. 5). Each f_sp,k and f_ch,k is average-pooled over
the H x W positions ((B, K, C) and (B, K, C/K)); two linear discriminators
(``spatial_discriminator`` C -> K, ``channel_discriminator`` C/K -> K) say
which of the K blocks a pooled feature came from. L_sp = sum_k CE(k, ...)
(summed over k as Eq. 5 writes it, averaged over the batch), L_ch likewise,
L_dis = L_sp + L_ch (``discriminant_loss``). The discriminators are part
of the DCAM (one pair per DCAM, as Eq. 5 is per module): the layer returns
their logits, so a DCAM used on its own carries everything its loss needs,
and their parameters live under the DCAM's scope. They cost nothing at test
time (a few K x C products) and are computed in both modes, so that
``init`` in inference mode creates them.

Readings where the paper is silent: the hidden widths of the spatial
blocks (C / 16) and of FC_k ((C/K) / 16, CBAM's reduction ratio), biases in
every conv / FC layer, Flax's default (LeCun normal) initialisation, no
BatchNorm inside the module (so ``train`` changes nothing here). Softmaxes
run in float32 whatever ``dtype``.

Note on scale: both softmaxes make their weights small (1 / (H W) and
1 / (C/K) on average), so f_sp is small next to f and the output is about
(C/K)^-1 times f_ch; the next stage's BatchNorm undoes the scale. A DCAM
after the last stage hands that scale to the pooled feature (Table 1's
stage-4 settings); the BNNeck normalises it for the classifier.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
from flax.linen.dtypes import promote_dtype
import jax.numpy as jnp
import optax

ALIGNMENTS = ("stack", "max")
ATTENTIONS = ("both", "spatial", "channel")


# LeCun normal per block: the fan-in leaves out the leading K axis, as each
# block's own nn.Conv / nn.Dense would compute it.
_BLOCK_KERNEL_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                      batch_axis=(0,))


class StackedAffine(nn.Module):
  """K independent affine maps y_k = x W_k + b_k, parameters stacked on a leading K axis.

  The K attention blocks of Eq. 1 (1x1 convolutions) and Eq. 3 (FC_k) as one
  einsum each, not ``nn.vmap`` over K modules: the same numbers, and it
  converts to ONNX (jax2onnx has no batching rule for a vmapped ``nn.Conv``).
  The parameters are those K ``nn.Conv`` / ``nn.Dense`` layers would have
  stacked: ``kernel`` (K, *window, C_in, features) and ``bias`` (K, features).

  Attributes:
    num_blocks: K.
    features: output width of each block.
    window: the kernel's spatial window, ``(1, 1)`` for a 1x1 convolution,
      ``()`` for a dense layer.
    dtype: computation dtype (None: that of the inputs, as ``nn.Dense``).
  """

  num_blocks: int
  features: int
  window: tuple[int, ...] = ()
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, per_block: bool = False) -> jax.Array:
    """(..., C_in) -> (K, ..., features); ``per_block``: x is already (K, ..., C_in),
    block k reading x[k]."""
    k, width = self.num_blocks, x.shape[-1]
    kernel = self.param("kernel", _BLOCK_KERNEL_INIT,
                        (k, *self.window, width, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (k, self.features), jnp.float32)
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    kernel = kernel.reshape(k, width, self.features)  # a 1x1 window is a matrix
    y = jnp.einsum("k...c,kcd->k...d" if per_block else "...c,kcd->k...d", x, kernel)
    return y + bias.reshape((k,) + (1,) * (y.ndim - 2) + (self.features,))


class SpatialAttentionBlocks(nn.Module):
  """The K spatial attention blocks of Eq. 1 before their softmax.

  Block k: conv1x1 (``hidden``) -> ReLU -> conv1x1 (1): f (B, H, W, C) ->
  scores (K, B, H, W). Parameters ``conv1`` / ``conv2`` as ``StackedAffine``.
  """

  num_blocks: int
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f: jax.Array) -> jax.Array:
    x = StackedAffine(self.num_blocks, self.hidden, (1, 1), self.dtype, name="conv1")(f)
    x = StackedAffine(self.num_blocks, 1, (1, 1), self.dtype, name="conv2")(
        nn.relu(x), per_block=True)
    return x[..., 0]


class ChannelAttentionBlocks(nn.Module):
  """The K FC_k of Eq. 3: Dense(hidden) -> ReLU -> Dense(features),
  (..., C/K) -> (K, ..., C/K). Parameters ``fc1`` / ``fc2`` as ``StackedAffine``."""

  num_blocks: int
  hidden: int
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(StackedAffine(self.num_blocks, self.hidden, name="fc1")(x))
    return StackedAffine(self.num_blocks, self.features, name="fc2")(x, per_block=True)


def align_stack(blocks: jax.Array) -> jax.Array:
  """Eq. 2 read literally: (B, K, H, W, C) -> (B, H, W, C).

  The K maps stacked along the height (stacked row k H + h is row h of
  block k) and max-pooled with a K x 1 window, stride K x 1. K must divide
  H (``DCAM`` checks it with a clearer message).
  """
  b, k, h, w, c = blocks.shape
  stacked = blocks.reshape(b, k * h, w, c)
  return nn.max_pool(stacked, (k, 1), strides=(k, 1), padding="VALID")


def align_max(blocks: jax.Array) -> jax.Array:
  """The max over the attention axis (the reading Eq. 2 is contrasted with)."""
  return blocks.max(axis=1)


class DCAM(nn.Module):
  """Discriminative Clue Alignment Module (module docstring: Eq. 1-5).

  Attributes:
    num_blocks: K, attention blocks in each of the two modules.
    stage: the backbone stage the module follows (only named in errors).
    alignment: ``"stack"`` (Eq. 2 literally) or ``"max"``.
    attention: ``"both"``, ``"spatial"`` or ``"channel"``.
    spatial_reduction: spatial blocks have C // spatial_reduction hidden
      channels (at least 1).
    channel_reduction: FC_k has (C/K) // channel_reduction hidden units (at
      least 1).
    dtype: computation dtype of the convolutions.
  """

  num_blocks: int = 8
  stage: int | str | None = None
  alignment: str = "stack"
  attention: str = "both"
  spatial_reduction: int = 16
  channel_reduction: int = 16
  dtype: Any = jnp.float32

  @property
  def uses_spatial(self) -> bool:
    return self.attention in ("both", "spatial")

  @property
  def uses_channel(self) -> bool:
    return self.attention in ("both", "channel")

  def _where(self) -> str:
    return f"the DCAM after stage {self.stage}" if self.stage is not None else "a DCAM"

  def _check(self, f: jax.Array) -> None:
    if self.alignment not in ALIGNMENTS:
      raise ValueError(f"DCAM alignment must be one of {ALIGNMENTS}, got "
                       f"{self.alignment!r} ({self._where()}).")
    if self.attention not in ATTENTIONS:
      raise ValueError(f"DCAM attention must be one of {ATTENTIONS}, got "
                       f"{self.attention!r} ({self._where()}).")
    if not isinstance(self.num_blocks, int) or self.num_blocks < 1:
      raise ValueError(f"DCAM num_blocks (K) must be an int >= 1, got "
                       f"{self.num_blocks!r} ({self._where()}).")
    if f.ndim != 4:
      raise ValueError(f"{self._where()} expects a (B, H, W, C) map, got shape "
                       f"{f.shape}.")
    _, height, _, channels = f.shape
    k = self.num_blocks
    if self.uses_spatial and self.alignment == "stack" and height % k:
      raise ValueError(
          f"{self._where()}: the feature map height H = {height} is not "
          f"divisible by K = {k} (num_blocks), so Eq. 2's K x 1 max-pool over "
          f"the stacked maps would mix blocks. Choose K dividing {height}, "
          "another input height, or alignment='max'.")
    if self.uses_channel and channels % k:
      raise ValueError(
          f"{self._where()}: C = {channels} channels are not divisible by "
          f"K = {k} (num_blocks); the channel module splits C into K parts of C/K.")

  @nn.compact
  def __call__(self, f: jax.Array, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Applies the module.

    Args:
      f: (B, H, W, C) stage output.
      train: unused (no BatchNorm or dropout inside); kept so that every
        inserted module is called alike.

    Returns:
      ``(out, aux)``: out (B, H, W, C) in ``dtype``; aux holds float32

      - ``spatial_attention`` (B, K, H, W): A_sp,k, each summing to 1;
      - ``spatial_pooled`` (B, K, C): f_sp,k averaged over H x W;
      - ``spatial_logits`` (B, K, K): the spatial discriminator on them;
      - ``channel_attention`` (B, K, C/K): A_ch,k, each summing to 1;
      - ``channel_pooled`` (B, K, C/K): f_ch,k averaged over H x W;
      - ``channel_logits`` (B, K, K): the channel discriminator on them;

      the spatial (channel) entries only when that module is on.
    """
    del train
    self._check(f)
    batch, height, width, channels = f.shape
    k = self.num_blocks
    f = jnp.asarray(f, self.dtype)
    aux = {}
    skip_sum = f
    if self.uses_spatial:
      scores = SpatialAttentionBlocks(k, dtype=self.dtype,
                                      hidden=max(channels // self.spatial_reduction, 1),
                                      name="spatial_blocks")(f)  # (K, B, H, W)
      scores = jnp.moveaxis(scores, 0, 1).astype(jnp.float32)
      attention = jax.nn.softmax(scores.reshape(batch, k, -1), axis=-1)
      attention = attention.reshape(batch, k, height, width)  # Eq. 1's A_sp,k
      per_block = f[:, None] * attention[..., None].astype(self.dtype)  # Eq. 1
      aligned = (align_stack if self.alignment == "stack" else align_max)(per_block)
      pooled = per_block.astype(jnp.float32).mean(axis=(2, 3))
      aux["spatial_attention"] = attention
      aux["spatial_pooled"] = pooled
      aux["spatial_logits"] = nn.Dense(k, name="spatial_discriminator")(pooled)
      skip_sum = aligned + f
    if not self.uses_channel:
      return skip_sum, aux

    part = channels // k
    f_ch = nn.Conv(part, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                   name="channel_reduction_conv")(skip_sum)  # (B, H, W, C/K)
    f_ch32 = f_ch.astype(jnp.float32)
    fc = ChannelAttentionBlocks(k, features=part,
                                hidden=max(part // self.channel_reduction, 1),
                                name="channel_blocks")
    # One call on both poolings: FC_k shared by the max and the average.
    both = fc(jnp.stack([f_ch32.max(axis=(1, 2)), f_ch32.mean(axis=(1, 2))]))
    channel_attention = jax.nn.softmax(jnp.moveaxis(both.sum(axis=1), 0, 1),
                                       axis=-1)  # Eq. 3: (B, K, C/K)
    per_block = (channel_attention[:, :, None, None, :].astype(self.dtype)
                 * f_ch[:, None])  # Eq. 4: (B, K, H, W, C/K)
    out = jnp.moveaxis(per_block, 1, 3).reshape(batch, height, width, channels)
    pooled = channel_attention * f_ch32.mean(axis=(1, 2))[:, None]
    aux["channel_attention"] = channel_attention
    aux["channel_pooled"] = pooled
    aux["channel_logits"] = nn.Dense(k, name="channel_discriminator")(pooled)
    return out, aux


def discriminant_loss(logits: jax.Array) -> jax.Array:
  """One term of Eq. 5: sum_k CE(k, logits[:, k]), averaged over the batch.

  Args:
    logits: (B, K, K); ``logits[b, k]`` are the discriminator's K scores for
      the pooled feature of block k of item b.

  Returns:
    Scalar float32: mean_b sum_k -log softmax(logits[b, k])[k].
  """
  batch, k = logits.shape[:2]
  labels = jnp.broadcast_to(jnp.arange(k), (batch, k))
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)
  return ce.sum(axis=1).mean()


def dcam_discriminant_loss(aux: dict[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_dis = L_sp + L_ch (Eq. 5) of one DCAM's aux, or summed over several.

  Args:
    aux: one ``DCAM`` aux dict, or a dict of them (e.g. per stage).

  Returns:
    (L_dis, {"discriminant_spatial": L_sp, "discriminant_channel": L_ch,
    "discriminant_accuracy": fraction of pooled features whose block the
    discriminators name correctly}).
  """
  auxes = [aux] if any(key.endswith("_logits") for key in aux) else list(aux.values())
  totals = {"spatial": jnp.float32(0.0), "channel": jnp.float32(0.0)}
  correct, count = jnp.float32(0.0), 0
  for one in auxes:
    for part in totals:
      logits = one.get(f"{part}_logits")
      if logits is None:
        continue
      totals[part] = totals[part] + discriminant_loss(logits)
      k = logits.shape[1]
      correct = correct + jnp.sum(jnp.argmax(logits, axis=-1) == jnp.arange(k))
      count += logits.shape[0] * k
  total = totals["spatial"] + totals["channel"]
  accuracy = correct / max(count, 1)
  return total, {"discriminant_spatial": totals["spatial"],
                 "discriminant_channel": totals["channel"],
                 "discriminant_accuracy": accuracy}
