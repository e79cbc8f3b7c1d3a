r"""Embedded Gaussian non-local block, as the official CACE-Net ResNet uses it.

Wang, Girshick, Gupta, He, "Non-local Neural Networks", CVPR 2018, Eq. 1-3
(embedded Gaussian: f(x_i, x_j) = exp(theta(x_i)^T phi(x_j)), normalised
by a softmax over j) with the residual of Eq. 6 (z = W_z y + x). It is not
in the CACE-Net paper; the authors' published code (TencentYoutuResearch/
PersonReID-YouReID, ``core/layers.py`` ``NonLocal`` and
``models/backbones/resnet.py``) inserts it into ResNet-50 when the model
config sets ``use_non_local`` (their ``example/cacenet/cacenet.yaml`` does).
Our own code, written from these facts:

- theta, phi, g: 1x1 convs C -> C' with bias; the score of positions i, j is
  theta_i . phi_j, softmax over j (no 1/sqrt(C') scaling);
  y_i = sum_j softmax_j g_j (C');
- W_z: a 1x1 conv C' -> C with bias, no BatchNorm (the backbone calls
  ``NonLocal`` without ``bn_layer``, which defaults to False), kernel
  initialised to zero; z = W_z y + x.
- C' = C // 16: the backbone passes ``planes * expansion // 16`` explicitly,
  overriding ``NonLocal``'s own default of C // 4 (``reduction`` here).
- Placement (the model's business): after the ReLU of the second-to-last
  bottleneck of a stage (``i == blocks - 2``); the stored versions of
  ``resnet.py`` differ on the stages: 2, 3 and 4 in one, 3 and 4 in another.

Initialisation: we zero W_z's kernel *and* bias, so the block is exactly
the identity at init. One stored version of ``core/layers.py`` zeroes both;
the version that also holds ``PairGraph`` leaves the bias at PyTorch's
default (uniform +-1/sqrt(C')), i.e. a small per-channel shift at init. The
``use_batch_norm`` option is the ``bn_layer=True`` form (W_z then BN with
zero-initialised scale and shift).

Shapes: x (B, H, W, C) NHWC -> (B, H, W, C). The softmax runs in float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class NonLocalBlock(nn.Module):
  """Embedded Gaussian non-local block with residual (module docstring).

  Attributes:
    reduction: inner channels C' = max(C // reduction, 1).
    use_batch_norm: BN after W_z (zero-initialised scale) instead of a
      zero-initialised W_z.
    dtype: computation dtype of the convs.
  """

  reduction: int = 16
  use_batch_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x (B, H, W, C) -> (B, H, W, C); ``train`` only matters for the BN option."""
    if x.ndim != 4:
      raise ValueError(f"NonLocalBlock expects a (B, H, W, C) map, got shape {x.shape}.")
    batch, height, width, channels = x.shape
    inner = max(channels // self.reduction, 1)

    def conv(features, name, init=nn.initializers.lecun_normal()):
      return nn.Conv(features, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=init, name=name)

    def positions(t):
      return t.reshape(batch, height * width, inner).astype(jnp.float32)

    theta = positions(conv(inner, "theta")(x))
    phi = positions(conv(inner, "phi")(x))
    g = positions(conv(inner, "g")(x))
    weights = jax.nn.softmax(jnp.einsum("bic,bjc->bij", theta, phi), axis=-1)
    y = jnp.einsum("bij,bjc->bic", weights, g).reshape(batch, height, width, inner)
    y = y.astype(self.dtype)
    if self.use_batch_norm:
      out = conv(channels, "output")(y)
      out = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         dtype=self.dtype, param_dtype=jnp.float32,
                         scale_init=nn.initializers.zeros, name="output_norm")(out)
    else:
      out = conv(channels, "output", nn.initializers.zeros)(y)
    return x + out
