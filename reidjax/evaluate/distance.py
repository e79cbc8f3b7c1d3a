"""Query x gallery distance matrices for embedding models.

* ``"euclidean"``: the *squared* Euclidean distance (the torchreid
  convention), ``||q||^2 + ||g||^2 - 2 q.g`` clamped at 0 (cancellation can
  make it slightly negative for near-identical features).
* ``"cosine"``: ``1 - cos(q, g)``, with each feature divided by
  ``max(||x||, eps)`` (as ``torch.nn.functional.normalize``), so a zero
  feature is at distance 1 from everything.

Half-precision features are promoted to float32 and the matrix products run at
``Precision.HIGHEST``: ranking is sensitive to small distance errors, so TF32 /
bf16 matmuls on accelerators are not acceptable here.
"""

from __future__ import annotations

import functools

import jax
from jax import lax
import jax.numpy as jnp

METRICS = ("euclidean", "cosine")


@functools.partial(jax.jit, static_argnames=("metric", "eps"))
def _pairwise_distance(q, g, metric: str, eps: float):
  dtype = jnp.promote_types(jnp.result_type(q, g), jnp.float32)
  q, g = q.astype(dtype), g.astype(dtype)
  dot = functools.partial(jnp.matmul, precision=lax.Precision.HIGHEST)
  if metric == "euclidean":
    q_sq = jnp.sum(q * q, axis=1)[:, None]
    g_sq = jnp.sum(g * g, axis=1)[None, :]
    return jnp.maximum(q_sq + g_sq - 2.0 * dot(q, g.T), 0.0)
  q = q / jnp.maximum(jnp.linalg.norm(q, axis=1, keepdims=True), eps)
  g = g / jnp.maximum(jnp.linalg.norm(g, axis=1, keepdims=True), eps)
  return 1.0 - dot(q, g.T)


def pairwise_distance(query_features, gallery_features,
                      metric: str = "euclidean",
                      eps: float = 1e-12) -> jax.Array:
  """Distances between every query and gallery feature.

  Args:
    query_features: (Q, D) array.
    gallery_features: (G, D) array.
    metric: ``"euclidean"`` (squared) or ``"cosine"``; see module docstring.
    eps: lower bound on a feature's norm for ``"cosine"``.

  Returns:
    (Q, G) float32 (float64 with ``jax_enable_x64`` and float64 inputs)
    distances, smaller = more similar.
  """
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
  q = jnp.asarray(query_features)
  g = jnp.asarray(gallery_features)
  if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
    raise ValueError(
        "query_features (Q, D) and gallery_features (G, D) must be 2-D with "
        f"the same D, got shapes {q.shape} and {g.shape}.")
  return _pairwise_distance(q, g, metric=metric, eps=float(eps))
