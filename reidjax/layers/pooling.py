r"""Generalised mean (GeM) pooling with a learnable exponent.

Radenović, Tolias, Chum, "Fine-tuning CNN Image Retrieval with No Human
Annotation", TPAMI 2018, the generalized-mean (GeM) pooling layer:
f_c = ( mean_{h,w} max(x_{h,w,c}, eps)^p )^(1/p), with one learnable p
shared by all channels. p = 1 is average pooling; p -> infinity tends to
max pooling. CACE-Net's published code (YouReID ``core/layers.py``,
``GeneralizedMeanPoolingP``: p initialised to 3, eps = 1e-6, clamp before
the power) offers it as ``pool_type="gemm"``. Note that its published
``example/cacenet/cacenet.yaml`` leaves ``pool_type`` at its default
(global average and max pooling concatenated), with the GeM line commented
out.

Shapes: x (N, H, W, C) NHWC -> (N, C) float32. The clamp keeps the power
defined (x >= eps > 0); p itself is not constrained.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class GeM(nn.Module):
  """Generalised mean pooling over H, W (module docstring).

  Attributes:
    p_init: initial exponent p.
    eps: inputs are clamped to at least eps before the power.
  """

  p_init: float = 3.0
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (N, H, W, C) -> (N, C) float32."""
    if x.ndim != 4:
      raise ValueError(f"GeM expects a (N, H, W, C) map, got shape {x.shape}.")
    p = self.param("p", nn.initializers.constant(self.p_init), (1,), jnp.float32)
    x = jnp.maximum(jnp.asarray(x, jnp.float32), self.eps)
    return jnp.mean(x ** p, axis=(1, 2)) ** (1.0 / p)
